// The CPU emulator of kernels.cu: lf_emulate(name, grid, block, args) runs kernel `name` for
// every block and thread of the grid, with `args` laid out as cuLaunchKernel's kernelParams
// (an array of pointers, one to each argument's value).
#include <cstddef>
#include <type_traits>
#include <utility>

#include "kernels.cu"

template <typename... A, std::size_t... I>
static void lf_call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <typename... A>
static void lf_run(void (*kernel)(A...), const unsigned* grid, const unsigned* block, void** args) {
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    for (unsigned bz = 0; bz < grid[2]; ++bz)
        for (unsigned by = 0; by < grid[1]; ++by)
            for (unsigned bx = 0; bx < grid[0]; ++bx) {
                blockIdx = {bx, by, bz};
                for (unsigned tz = 0; tz < block[2]; ++tz)
                    for (unsigned ty = 0; ty < block[1]; ++ty)
                        for (unsigned tx = 0; tx < block[0]; ++tx) {
                            threadIdx = {tx, ty, tz};
                            lf_call(kernel, args, std::index_sequence_for<A...>{});
                        }
            }
}

// 0 when the kernel ran, -1 when no kernel has that name.
extern "C" int lf_emulate(const char* name, const unsigned* grid, const unsigned* block, void** args) {
#define LF_DISPATCH(k)                    \
    if (std::strcmp(name, #k) == 0) {     \
        lf_run(k, grid, block, args);     \
        return 0;                         \
    }
    LF_KERNEL_NAMES(LF_DISPATCH)
#undef LF_DISPATCH
    return -1;
}
