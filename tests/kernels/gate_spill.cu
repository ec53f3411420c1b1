// Compile-gate fixture: a kernel that must spill. 64 floats live at once, indexed dynamically, while
// __launch_bounds__(1024, 2) caps ptxas at 32 registers per thread.
template <int M>
__global__ void __launch_bounds__(1024, 2) gate_spill(float* y, int k) {
    float loc[M];
    for (int j = 0; j < M; ++j) loc[j] = y[j * 7 + threadIdx.x];
    float acc = 0.0f;
    for (int j = 0; j < M; ++j) acc += loc[(j * k) % M] * loc[j];
    y[threadIdx.x] = acc;
}
