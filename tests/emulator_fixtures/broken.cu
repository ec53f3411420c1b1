// Emulator test fixture: does not compile (the build error must carry the compiler's message).
__global__ void broken(float* y) {
    y[threadIdx.x] = undeclared_identifier;
}
