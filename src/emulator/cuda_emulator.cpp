// The emulator's runtime: runs the blocks of one launch on the calling OS thread.
//
// Each CUDA thread of a block is a fiber with its own stack. The scheduler runs a warp's fibers in
// lane order until each has exited or stopped at a barrier; a warp barrier (shuffle, __syncwarp)
// is released once every lane it names has arrived, and __syncthreads once every thread of the
// block has. Threads that have exited count as arrived. A thread that never waits hands its
// stack straight to the next one, so barrier-free kernels cost one context switch per thread.
#include "cuda_emulator.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

// Fibers switch with a few instructions of assembly on x86-64, and with swapcontext elsewhere.
#if defined(__x86_64__) && !defined(HW_EMULATOR_UCONTEXT)
#define HW_ASM_FIBERS 1
#else
#define HW_ASM_FIBERS 0
#include <ucontext.h>
#endif

__thread uint3 threadIdx;
__thread uint3 blockIdx;
__thread dim3 blockDim;
__thread dim3 gridDim;

namespace hw {

__thread unsigned long long block_serial;

namespace {

// Status codes of hw_emulator_run, mirrored in src/emulator/mod.rs.
enum Status : int {
    kOk = 0,
    kBadConfig = 1,
    kDivergentBarrier = 2,
    kOutOfMemory = 3,
    kIncompleteMma = 4,
    kBadAsyncCopy = 5,
};

constexpr unsigned kMaxThreadsPerBlock = 1024;
// The most dynamic shared memory any emulated GPU allows per block (9.0's 227 KiB); the emulated
// architecture's own limit is checked before a launch gets here (src/emulator/mod.rs).
constexpr std::size_t kMaxDynamicShared = 227 * 1024;
// Room for a kernel's local arrays; a guard page below turns an overflow into a fault.
constexpr std::size_t kStackBytes = 256 * 1024;
// cp.async copies and groups one thread may have in flight (the GEMM kernels need 16 and 2).
constexpr unsigned kMaxAsyncCopies = 64;
constexpr unsigned kMaxAsyncGroups = 8;

// ---- Context switching --------------------------------------------------------------------

#if HW_ASM_FIBERS

// Saves the callee-saved registers on the current stack, stores the stack pointer in *save_sp,
// and resumes whatever was suspended at load_sp. About 20x cheaper than swapcontext, which makes
// a system call to save the signal mask.
extern "C" void hw_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .globl hw_switch
    .hidden hw_switch
    .type hw_switch, @function
hw_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size hw_switch, .-hw_switch
)");

struct Context {
    void* sp = nullptr;
};

void context_switch(Context& from, Context& to) { hw_switch(&from.sp, to.sp); }

// A frame that hw_switch "returns" into `entry` from, with the stack aligned as at a call.
void context_start(Context& ctx, char* stack, std::size_t size, void (*entry)()) {
    auto* top = reinterpret_cast<void**>(reinterpret_cast<std::uintptr_t>(stack + size) & ~15ul);
    *--top = nullptr;                              // entry's own return address: never used
    *--top = reinterpret_cast<void*>(entry);       // where hw_switch's `ret` goes
    for (int reg = 0; reg < 6; ++reg) *--top = nullptr;  // rbp rbx r12 r13 r14 r15
    ctx.sp = top;
}

#else

// The portable fallback: correct, but every switch is a system call.
struct Context {
    ucontext_t uc;
};

void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

void context_start(Context& ctx, char* stack, std::size_t size, void (*entry)()) {
    getcontext(&ctx.uc);
    ctx.uc.uc_stack.ss_sp = stack;
    ctx.uc.uc_stack.ss_size = size;
    ctx.uc.uc_link = nullptr;
    makecontext(&ctx.uc, entry, 0);
}

#endif

// ---- Fibers and the scheduler -------------------------------------------------------------

enum class State : unsigned char { NotStarted, Runnable, Running, AtBlockBarrier, AtWarpBarrier, Exited };

// One queued cp.async: bytes from src (then zeros up to `bytes`, past src_bytes) into dst.
struct AsyncCopy {
    void* dst;
    const void* src;
    unsigned bytes, src_bytes;
};

struct Fiber {
    Context context;
    char* stack = nullptr;  // held from the first run until the thread exits
    uint3 tid = {0, 0, 0};
    unsigned lane = 0;
    unsigned warp = 0;
    unsigned warp_mask = 0;  // the lanes the warp barrier it waits at names
    unsigned exchanges = 0;  // warp exchanges made so far; their parity picks the exchange row
    unsigned mmas = 0;       // mma.sync made so far: the stamp of the next, and its slot's parity
    State state = State::NotStarted;
    // This thread's cp.async copies in issue order; group_end[i] is where committed group i ends.
    unsigned copy_count = 0, group_count = 0;
    unsigned group_end[kMaxAsyncGroups];
    AsyncCopy copies[kMaxAsyncCopies];

    void reset() {
        state = State::NotStarted;
        exchanges = mmas = copy_count = group_count = 0;
    }
};

// The operands of one mma.sync, gathered from the 32 lanes; stamp[lane] says which of the lane's
// mma calls wrote them, so that a lane that never arrived is caught.
struct MmaSlot {
    unsigned a[32][4];
    unsigned b[32][2];
    unsigned stamp[32];
    // A [row][k] and B [n][k] as TF32 values, gathered once per mma by the first lane through.
    unsigned gathered;
    double A[16][8];
    double B[8][8];
};

// Two rows, used alternately: a lane can only write a row again after every lane has passed
// the barrier of the exchange in between, so nobody still reads it.
struct WarpExchange {
    std::uint64_t rows[2][32];
    MmaSlot mma[2];  // used alternately, as the rows
};

// Everything one OS thread needs to run blocks; lives as long as the thread.
struct Executor {
    Context scheduler;
    std::vector<Fiber> fibers;
    std::vector<WarpExchange> warps;
    std::vector<char*> free_stacks;
    std::vector<char*> all_stacks;
    unsigned char* dynamic_shared = nullptr;
    void (*invoke)(void**) = nullptr;
    void** args = nullptr;
    // A misuse a thread detected (an mma not every lane reached, a bad cp.async): the block's
    // result, reported once the block has run.
    Status fault = kOk;

    ~Executor() {
        for (char* stack : all_stacks) munmap(stack - guard_bytes(), kStackBytes + guard_bytes());
        std::free(dynamic_shared);
    }

    static std::size_t guard_bytes() { return std::size_t(sysconf(_SC_PAGESIZE)); }

    char* take_stack() {
        if (!free_stacks.empty()) {
            char* stack = free_stacks.back();
            free_stacks.pop_back();
            return stack;
        }
        std::size_t guard = guard_bytes();
        void* mapping = mmap(nullptr, kStackBytes + guard, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (mapping == MAP_FAILED) return nullptr;
        mprotect(mapping, guard, PROT_NONE);
        char* stack = static_cast<char*>(mapping) + guard;
        all_stacks.push_back(stack);
        return stack;
    }

    void release_stack(Fiber& fiber) {
        if (fiber.stack != nullptr) free_stacks.push_back(fiber.stack);
        fiber.stack = nullptr;
    }
};

// Plain pointers for the hot paths; thread_local objects with destructors cost a call per use.
__thread Executor* current_executor;
__thread Fiber* current_fiber;

Executor& executor() {
    static thread_local Executor instance;
    return instance;
}

[[noreturn]] void fiber_main() {
    Executor& ex = *current_executor;
    Fiber& fiber = *current_fiber;
    ex.invoke(ex.args);
    fiber.state = State::Exited;
    context_switch(fiber.context, ex.scheduler);
    __builtin_unreachable();
}

// Runs one fiber until it exits or waits at a barrier.
bool resume(Executor& ex, Fiber& fiber) {
    if (fiber.state == State::NotStarted) {
        fiber.stack = ex.take_stack();
        if (fiber.stack == nullptr) return false;
        context_start(fiber.context, fiber.stack, kStackBytes, fiber_main);
    }
    fiber.state = State::Running;
    current_fiber = &fiber;
    threadIdx = fiber.tid;
    context_switch(ex.scheduler, fiber.context);
    if (fiber.state == State::Exited) ex.release_stack(fiber);
    return true;
}

// Runs a warp until all its threads have exited or wait at __syncthreads.
Status run_warp(Executor& ex, Fiber* lanes, unsigned count) {
    for (;;) {
        for (unsigned i = 0; i < count; ++i) {
            State state = lanes[i].state;
            if (state == State::NotStarted || state == State::Runnable) {
                if (!resume(ex, lanes[i])) return kOutOfMemory;
            }
        }
        unsigned at_warp = 0, at_block = 0, named = 0;
        for (unsigned i = 0; i < count; ++i) {
            if (lanes[i].state == State::AtWarpBarrier) {
                at_warp |= 1u << i;
                named |= lanes[i].warp_mask;
            } else if (lanes[i].state == State::AtBlockBarrier) {
                at_block |= 1u << i;
            }
        }
        if (at_warp == 0) return kOk;
        // A lane the warp waits for sits at __syncthreads instead: on a GPU, a hang.
        if (named & at_block) return kDivergentBarrier;
        for (unsigned i = 0; i < count; ++i) {
            if (lanes[i].state == State::AtWarpBarrier) lanes[i].state = State::Runnable;
        }
    }
}

Status run_block(Executor& ex, std::size_t shared_bytes) {
    for (Fiber& fiber : ex.fibers) fiber.reset();
    for (WarpExchange& warp : ex.warps) std::memset(&warp, 0, sizeof warp);
    // Shared memory starts undefined on a GPU; NaN-filled here, so code that forgets to
    // initialise it fails here too instead of reading zeros or a previous block's values. Static
    // `__shared__` arrays are filled on first use in the block (poison_shared), once the serial
    // tells them a new block began.
    std::memset(ex.dynamic_shared, 0xff, shared_bytes);
    ++block_serial;

    unsigned threads = unsigned(ex.fibers.size());
    for (;;) {
        for (unsigned first = 0; first < threads; first += warpSize) {
            unsigned count = threads - first < unsigned(warpSize) ? threads - first : warpSize;
            Status status = run_warp(ex, &ex.fibers[first], count);
            if (status != kOk) return status;
        }
        if (ex.fault != kOk) return ex.fault;
        bool waiting = false;
        for (Fiber& fiber : ex.fibers) {
            if (fiber.state == State::AtBlockBarrier) {
                fiber.state = State::Runnable;
                waiting = true;
            }
        }
        if (!waiting) return kOk;
    }
}

}  // namespace

void block_barrier() {
    Fiber& fiber = *current_fiber;
    fiber.state = State::AtBlockBarrier;
    context_switch(fiber.context, current_executor->scheduler);
}

void warp_barrier(unsigned mask) {
    Fiber& fiber = *current_fiber;
    fiber.state = State::AtWarpBarrier;
    fiber.warp_mask = mask;
    context_switch(fiber.context, current_executor->scheduler);
}

const std::uint64_t* warp_exchange(unsigned mask, std::uint64_t value) {
    Fiber& fiber = *current_fiber;
    std::uint64_t* row = current_executor->warps[fiber.warp].rows[fiber.exchanges++ & 1];
    row[fiber.lane] = value;
    warp_barrier(mask);
    return row;
}

unsigned lane_id() { return current_fiber->lane; }

// mma.sync as a warp collective: each lane publishes its fragments and meets the warp; the first
// lane out of the barrier gathers them into A and B (keeping only their TF32 bits: the low 13 are
// ignored, as the tensor cores do with raw fp32), then each lane computes its own four elements
// of D. Products of two TF32 values are exact in double; they are summed in k order and rounded
// to fp32 once, with c.
void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    Fiber& fiber = *current_fiber;
    unsigned stamp = ++fiber.mmas;
    MmaSlot& slot = current_executor->warps[fiber.warp].mma[stamp & 1];
    unsigned lane = fiber.lane;
    for (int i = 0; i < 4; ++i) slot.a[lane][i] = a[i];
    for (int i = 0; i < 2; ++i) slot.b[lane][i] = b[i];
    slot.stamp[lane] = stamp;
    warp_barrier(0xffffffffu);
    if (slot.gathered != stamp) {
        for (unsigned l = 0; l < 32; ++l) {
            if (slot.stamp[l] != stamp) {
                current_executor->fault = kIncompleteMma;
                for (int i = 0; i < 4; ++i) d[i] = __int_as_float(0x7fffffff);
                return;
            }
        }
        // The PTX fragment layout, g = lane / 4, t = lane % 4: A[row][k] is in lane
        // 4·(row % 8) + k % 4, register row / 8 + 2·(k / 4); B[k][n] in lane 4·n + k % 4,
        // register k / 4.
        auto tf32 = [](unsigned bits) { return double(__uint_as_float(bits & 0xffffe000u)); };
        for (unsigned row = 0; row < 16; ++row) {
            for (unsigned k = 0; k < 8; ++k) {
                slot.A[row][k] = tf32(slot.a[4 * (row % 8) + k % 4][row / 8 + 2 * (k / 4)]);
            }
        }
        for (unsigned k = 0; k < 8; ++k) {
            for (unsigned n = 0; n < 8; ++n) slot.B[n][k] = tf32(slot.b[4 * n + k % 4][k / 4]);
        }
        slot.gathered = stamp;
    }
    // D[row][col] is in lane 4·(row % 8) + col / 2, register 2·(row / 8) + col % 2.
    unsigned g = lane / 4, t = lane % 4;
    for (unsigned i = 0; i < 4; ++i) {
        const double* a_row = slot.A[g + 8 * (i / 2)];
        const double* b_col = slot.B[2 * t + i % 2];
        double sum = 0.0;
        for (unsigned k = 0; k < 8; ++k) sum += a_row[k] * b_col[k];
        d[i] = float(sum + double(c[i]));
    }
}

void async_copy(void* dst, const void* src, unsigned bytes, unsigned src_bytes) {
    Fiber& fiber = *current_fiber;
    // cp-size is 4, 8 or 16, and both addresses must be aligned to it.
    bool size_ok = bytes == 4 || bytes == 8 || bytes == 16;
    std::uintptr_t misaligned = (reinterpret_cast<std::uintptr_t>(dst) |
                                 reinterpret_cast<std::uintptr_t>(src)) & (bytes - 1);
    if (!size_ok || misaligned || src_bytes > bytes || fiber.copy_count == kMaxAsyncCopies) {
        current_executor->fault = kBadAsyncCopy;
        return;
    }
    fiber.copies[fiber.copy_count++] = {dst, src, bytes, src_bytes};
    // Until its wait the copy is in flight and the destination undefined: NaN here, so a thread
    // that reads it too early (no barrier after another thread's wait, or a buffer refilled
    // before every thread has read it) computes NaN instead of quietly reading old data.
    std::memset(dst, 0xff, bytes);
}

void async_commit() {
    Fiber& fiber = *current_fiber;
    if (fiber.group_count == kMaxAsyncGroups) {
        current_executor->fault = kBadAsyncCopy;
        return;
    }
    fiber.group_end[fiber.group_count++] = fiber.copy_count;
}

// Performs every committed group but the `pending` newest, in order, and forgets them. Copies
// land only here (their destinations hold NaN from the issue on), so a kernel that reads before
// its wait, or before the __syncthreads after another thread's, reads NaN.
void async_wait(unsigned pending) {
    Fiber& fiber = *current_fiber;
    if (fiber.group_count <= pending) return;
    unsigned done_groups = fiber.group_count - pending;
    unsigned done = fiber.group_end[done_groups - 1];
    for (unsigned i = 0; i < done; ++i) {
        const AsyncCopy& copy = fiber.copies[i];
        if (copy.bytes == 4 && copy.src_bytes == 4) {  // the GEMM kernels' case, made cheap
            std::memcpy(copy.dst, copy.src, 4);
            continue;
        }
        std::memcpy(copy.dst, copy.src, copy.src_bytes);
        std::memset(static_cast<char*>(copy.dst) + copy.src_bytes, 0, copy.bytes - copy.src_bytes);
    }
    std::memmove(fiber.copies, fiber.copies + done, (fiber.copy_count - done) * sizeof(AsyncCopy));
    fiber.copy_count -= done;
    for (unsigned i = done_groups; i < fiber.group_count; ++i) {
        fiber.group_end[i - done_groups] = fiber.group_end[i] - done;
    }
    fiber.group_count -= done_groups;
}

void* dynamic_shared() { return current_executor->dynamic_shared; }

// One table per kernel file, listed by build.rs in the generated kernel_tables.cpp.
extern const KernelTable kernel_tables[];
extern const unsigned kernel_table_count;

}  // namespace hw

namespace {

// Every kernel of every build, with the architecture of its build.
struct BuiltKernel {
    const hw::KernelEntry* entry;
    unsigned arch;
};

std::vector<BuiltKernel> all_kernels() {
    std::vector<BuiltKernel> kernels;
    for (unsigned t = 0; t < hw::kernel_table_count; ++t) {
        const hw::KernelTable& file = hw::kernel_tables[t];
        for (unsigned k = 0; k < *file.count; ++k) kernels.push_back({&file.entries[k], file.arch});
    }
    return kernels;
}

const std::vector<BuiltKernel>& kernels() {
    static const std::vector<BuiltKernel> table = all_kernels();
    return table;
}

}  // namespace

// The index of the kernel called `name` in the build for architecture `arch`, or -1.
extern "C" int hw_emulator_find(unsigned arch, const char* name) {
    const auto& table = kernels();
    for (std::size_t i = 0; i < table.size(); ++i) {
        if (table[i].arch == arch && std::strcmp(table[i].entry->name, name) == 0) return int(i);
    }
    return -1;
}

// The kernel's parameter kinds, one character each (see hw::param_kind).
extern "C" const char* hw_emulator_params(int kernel) {
    return kernels()[std::size_t(kernel)].entry->params;
}

// The kernel's __launch_bounds__ thread count, or 0.
extern "C" unsigned hw_emulator_max_threads(int kernel) {
    return kernels()[std::size_t(kernel)].entry->max_threads;
}

// Runs blocks [first_block, end_block) of a launch, numbered x fastest, on the calling thread.
// `args` has cuLaunchKernel's kernelParams shape: one pointer to each argument's value.
extern "C" int hw_emulator_run(int kernel, const unsigned grid[3], const unsigned block[3],
                               unsigned shared_bytes, void** args,
                               unsigned long long first_block, unsigned long long end_block) {
    using namespace hw;
    unsigned long long threads = 1ull * block[0] * block[1] * block[2];
    if (threads == 0 || threads > kMaxThreadsPerBlock || shared_bytes > kMaxDynamicShared) {
        return kBadConfig;
    }
    Executor& ex = executor();
    if (ex.dynamic_shared == nullptr) {
        ex.dynamic_shared = static_cast<unsigned char*>(std::aligned_alloc(16, kMaxDynamicShared));
        if (ex.dynamic_shared == nullptr) return kOutOfMemory;
    }
    ex.invoke = kernels()[std::size_t(kernel)].entry->invoke;
    ex.args = args;
    ex.fibers.assign(threads, Fiber{});
    ex.warps.assign((threads + warpSize - 1) / warpSize, WarpExchange{});
    for (unsigned t = 0; t < threads; ++t) {
        Fiber& fiber = ex.fibers[t];
        fiber.tid = {t % block[0], t / block[0] % block[1], t / (block[0] * block[1])};
        fiber.lane = t % warpSize;
        fiber.warp = t / warpSize;
    }
    current_executor = &ex;
    ex.fault = kOk;
    blockDim = {block[0], block[1], block[2]};
    gridDim = {grid[0], grid[1], grid[2]};

    Status status = kOk;
    for (unsigned long long b = first_block; b < end_block && status == kOk; ++b) {
        blockIdx = {unsigned(b % grid[0]), unsigned(b / grid[0] % grid[1]),
                    unsigned(b / (1ull * grid[0] * grid[1]))};
        status = run_block(ex, shared_bytes);
    }
    // A failed block leaves fibers suspended mid-kernel; their stacks hold nothing to clean up.
    for (Fiber& fiber : ex.fibers) ex.release_stack(fiber);
    return status;
}
