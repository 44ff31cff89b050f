// The subset of CUDA C that kernels/*.cu use, implemented for the CPU, and nothing more: a kernel
// that reaches for anything else (a fast-math intrinsic such as __expf, another atomic, a vector
// type) fails to compile here until it is added with a selftest kernel that holds the emulator
// and the GPU to the same result.
//
// Every kernel file is compiled by g++ with this header in front of it (build.rs does that), so the
// same source runs on the GPU (through NVRTC) and here. The model:
// - a block's threads are fibers on one OS thread; a fiber only gives up the CPU at a barrier
//   (__syncthreads, __syncwarp, a shuffle), so kernels without barriers run thread after thread;
// - blocks run one at a time on each OS thread, so `__shared__` is thread-local storage, filled
//   with NaN at the start of every block (build.rs and hw::poison_shared);
// - a warp's shuffles meet at a warp barrier and trade values through a per-warp exchange.
// Keep to what is here; anything else is a compile error, which is the point.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <type_traits>
#include <utility>

// ---- Qualifiers -------------------------------------------------------------------------------

#define __global__
#define __device__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// `__shared__` has no definition here: build.rs rewrites every declaration (see rewrite_shared):
// static arrays become per-OS-thread arrays poisoned per block by hw::poison_shared, and
// `extern __shared__` arrays pointers to hw::dynamic_shared().

// ---- Built-in variables -----------------------------------------------------------------------

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};

extern __thread uint3 threadIdx;
extern __thread uint3 blockIdx;
extern __thread dim3 blockDim;
extern __thread dim3 gridDim;
constexpr int warpSize = 32;

// ---- The runtime the intrinsics call (cuda_emulator.cpp) --------------------------------------

namespace hw {
// Waits until every thread of the block still running has arrived.
void block_barrier();
// Waits until the threads of this warp named in `mask` (and still running) have arrived.
void warp_barrier(unsigned mask);
// Publishes `value` for this lane, meets the warp, and returns the 32 values the lanes published.
const std::uint64_t* warp_exchange(unsigned mask, std::uint64_t value);
// This thread's lane within its warp (threads are numbered x fastest, then y, then z).
unsigned lane_id();
// The launch's dynamic shared memory (`extern __shared__`), 16-byte aligned.
void* dynamic_shared();

// Counts the blocks this OS thread has started (run_block adds one before each).
extern __thread unsigned long long block_serial;

// A static `__shared__` array's first use in a block: shared memory starts undefined on a GPU, so
// fill it with 0xff bytes (NaN as floats) for the first thread of the block to get here.
inline void poison_shared(void* array, std::size_t bytes, unsigned long long& poisoned_in_block) {
    if (poisoned_in_block != block_serial) {
        std::memset(array, 0xff, bytes);
        poisoned_in_block = block_serial;
    }
}

template <typename T> std::uint64_t to_bits(T value) {
    static_assert(sizeof(T) <= sizeof(std::uint64_t), "shuffles move at most 8 bytes");
    std::uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    return bits;
}

template <typename T> T from_bits(std::uint64_t bits) {
    T value;
    std::memcpy(&value, &bits, sizeof(T));
    return value;
}

template <typename T> T shuffle(unsigned mask, T value, unsigned src_lane) {
    return from_bits<T>(warp_exchange(mask, to_bits(value))[src_lane]);
}
}  // namespace hw

// ---- Bit casts ------------------------------------------------------------------------------

inline float __int_as_float(int x) { return hw::from_bits<float>(std::uint32_t(x)); }
inline float __uint_as_float(unsigned x) { return hw::from_bits<float>(x); }
inline unsigned __float_as_uint(float x) { return unsigned(hw::to_bits(x)); }

// ---- Synchronisation and warp intrinsics ------------------------------------------------------

inline void __syncthreads() { hw::block_barrier(); }

template <typename T> T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    unsigned segment = hw::lane_id() & ~unsigned(width - 1);
    return hw::shuffle(mask, var, segment + (unsigned(src_lane) & unsigned(width - 1)));
}

// Lanes whose source falls outside their segment of `width` lanes keep their own value.
template <typename T> T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    unsigned lane = hw::lane_id();
    bool inside = (lane & unsigned(width - 1)) + delta < unsigned(width);
    return hw::shuffle(mask, var, inside ? lane + delta : lane);
}

template <typename T> T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    unsigned lane = hw::lane_id();
    bool inside = (lane & unsigned(width - 1)) >= delta;
    return hw::shuffle(mask, var, inside ? lane - delta : lane);
}

template <typename T> T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    unsigned lane = hw::lane_id();
    unsigned src = lane ^ unsigned(lane_mask);
    bool inside = src <= (lane | unsigned(width - 1));
    return hw::shuffle(mask, var, inside ? src : lane);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
    const std::uint64_t* votes = hw::warp_exchange(mask, predicate != 0);
    unsigned ballot = 0;
    for (unsigned lane = 0; lane < 32; ++lane) {
        if ((mask >> lane & 1u) && votes[lane]) ballot |= 1u << lane;
    }
    return ballot;
}

// ---- Atomics (blocks may run on several OS threads at once, so these are real atomics) ---------

inline unsigned atomicAdd(unsigned* address, unsigned val) {
    return __atomic_fetch_add(address, val, __ATOMIC_RELAXED);
}
inline int atomicMax(int* address, int val) {
    int old = __atomic_load_n(address, __ATOMIC_RELAXED);
    while (old < val && !__atomic_compare_exchange_n(address, &old, val, true, __ATOMIC_RELAXED,
                                                     __ATOMIC_RELAXED)) {
    }
    return old;
}
// A compare-and-swap loop on the bits, as GPUs did before native float atomics.
inline float atomicAdd(float* address, float val) {
    auto* bits = reinterpret_cast<std::uint32_t*>(address);
    std::uint32_t old = __atomic_load_n(bits, __ATOMIC_RELAXED);
    for (;;) {
        std::uint32_t sum = __float_as_uint(__uint_as_float(old) + val);
        if (__atomic_compare_exchange_n(bits, &old, sum, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
            return __uint_as_float(old);
        }
    }
}

// ---- Math -------------------------------------------------------------------------------------

// expf, logf, sqrtf and fmaxf come from <cmath>, correctly rounded or nearly so, as CUDA's are
// without --use_fast_math (which build.rs does not pass). The fast-math intrinsics (__expf and
// kin) are left out on purpose: no kernel uses them, and mapped to the exact functions they
// would hide their GPU error (several ulp) from every emulated test.

// min and max as CUDA's whole overload set, so that a call never converts its arguments silently.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(int a, unsigned b) { return min(unsigned(a), b); }
inline unsigned max(int a, unsigned b) { return max(unsigned(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, unsigned(b)); }
inline unsigned max(unsigned a, int b) { return max(a, unsigned(b)); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---- Tensor cores and asynchronous copies: host versions of the PTX wrappers in gemm.cuh ------

namespace hw {
// The warp-wide mma.sync m16n8k8 TF32 (cuda_emulator.cpp): every lane of the warp must call it.
void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]);
// cp.async: queued per thread, performed when a wait_group covers its group.
void async_copy(void* dst, const void* src, unsigned bytes, unsigned src_bytes);
void async_commit();
void async_wait(unsigned pending);
}  // namespace hw

// cvt.rna.tf32.f32 as the hardware does it: add half an ulp of TF32 to the magnitude of a finite
// x (a carry may round up into the exponent, and past FLT_MAX to Inf), then clear the 13 bits
// TF32 drops. Inf passes through; a NaN stays NaN unless its payload lies only in those 13 bits.
inline unsigned cvt_rna_tf32(float x) {
    unsigned bits = __float_as_uint(x);
    if ((bits & 0x7f800000u) != 0x7f800000u) bits += 0x1000u;
    return bits & 0xffffe000u;
}
inline void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2],
                             const float c[4]) {
    hw::mma_m16n8k8_tf32(d, a, b, c);
}
inline void cp_async_4(float* dst, const float* src, unsigned src_bytes) {
    hw::async_copy(dst, src, 4, src_bytes);
}
inline void cp_async_commit() { hw::async_commit(); }
template <int Pending> void cp_async_wait() { hw::async_wait(Pending); }

// ---- The table of kernels build.rs generates for each .cu file -------------------------------

namespace hw {
// 'p' pointer, 'i' int, 'u' unsigned, 'f' float, '?' anything else (not launchable from Rust).
template <typename T> constexpr char param_kind() {
    if constexpr (std::is_pointer<T>::value) return 'p';
    else if constexpr (std::is_same<T, float>::value) return 'f';
    else if constexpr (std::is_integral<T>::value && sizeof(T) == 4)
        return std::is_signed<T>::value ? 'i' : 'u';
    else return '?';
}

struct KernelEntry {
    const char* name;
    // Calls the kernel with arguments unpacked from cuLaunchKernel's `kernelParams` shape.
    void (*invoke)(void** args);
    // One param_kind per parameter, NUL-terminated.
    const char* params;
    // The first argument of the kernel's __launch_bounds__, or 0 where it has none.
    unsigned max_threads;
};

// The kernels of one .cu file as compiled for one architecture (`__CUDA_ARCH__` / 10).
struct KernelTable {
    const KernelEntry* entries;
    const unsigned* count;
    unsigned arch;
};

template <auto Kernel> struct Signature;
template <typename... P, void (*Kernel)(P...)> struct Signature<Kernel> {
    static void invoke([[maybe_unused]] void** args) {
        call(args, std::index_sequence_for<P...>{});
    }
    template <std::size_t... I> static void call(void** args, std::index_sequence<I...>) {
        Kernel(*static_cast<P*>(args[I])...);
    }
    static constexpr char params[] = {param_kind<P>()..., '\0'};
};
}  // namespace hw

// One architecture's build of the kernels lives in namespace `ns` (build.rs: hw_sm75, ...).
#define HW_KERNEL_ENTRY(ns, name, max_threads)                                                     \
    hw::KernelEntry {                                                                              \
        #name, hw::Signature<&ns::name>::invoke, hw::Signature<&ns::name>::params, max_threads    \
    }
