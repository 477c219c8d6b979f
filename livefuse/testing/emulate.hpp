// Lets g++ compile kernels.cu for the CPU: every thread of a launch runs in turn on one CPU
// thread (lf_emulate in emulate.cpp). Only what kernels.cu uses is provided.
#pragma once

#include <cmath>
#include <cstring>

struct LfDim {
    unsigned x, y, z;
};

// Per CPU thread, so that two emulated launches on two threads do not mix their indices.
static thread_local LfDim threadIdx, blockIdx, blockDim, gridDim;

#define LF_KERNEL extern "C" void
#define LF_INLINE static inline

// The GPU converts with cvt.rn (round to nearest even); _Float16 does the same on x86-64.
LF_INLINE unsigned short lf_f2h(float v) {
    _Float16 h = (_Float16)v;
    unsigned short bits;
    std::memcpy(&bits, &h, sizeof bits);
    return bits;
}

LF_INLINE float lf_h2f(unsigned short bits) {
    _Float16 h;
    std::memcpy(&h, &bits, sizeof h);
    return (float)h;
}
