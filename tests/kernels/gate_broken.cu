// Compile-gate fixture: does not compile (undeclared identifier).
template <typename T>
__global__ void gate_broken(T* y) {
    y[threadIdx.x] = undeclared_value;
}
