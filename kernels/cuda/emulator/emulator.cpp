// A CPU emulator of the CUDA execution model for qtier's kernel sources, built into the libcuda
// shim of the tests (libcuda.cpp, which includes this file): the very `.cu` files NVRTC compiles
// for the GPU are compiled here as C++ (QTIER_CPU_EMULATION defined), and
// `qtier_emu_launch_params` runs a kernel by name with the driver API's parameter array, so the
// host code of `qtier_kernels::cuda` and the kernels' indexing, reductions and barriers run in CI
// without a GPU.
//
// The model: one launch at a time; the blocks of a grid run one after another, and the threads
// of a block run as fibers (each its own stack) on the calling thread, switched cooperatively at
// barriers: __syncthreads waits for every thread of the block that has not returned from the
// kernel (returned threads no longer count, as on the GPU), __syncwarp and the warp shuffles
// for the lanes of the thread's warp. Each warp runs as far as it can before the next, in index
// order in one block and in reverse order (lanes too) in the next, alternating between launches
// as well, so that a read the missing barrier leaves unordered with its write sees stale data
// whichever warp writes. Threads left waiting at barriers that can never complete
// (e.g. a __syncthreads some threads skip while others wait at a __syncwarp) are reported as a
// deadlock, not hung. A shuffle that reads a lane outside its mask, or one that has returned,
// is an error (the value is undefined on a GPU). Shared memory (`__shared__`, a function-local
// static here) is shared by a block's threads and poisoned (all bytes 0xff) before each block,
// whose reads of what it did not write then see NaN or -1 rather than zeros. Arguments are
// read from the driver's parameter array with the kernel's own parameter types, as the driver
// does (the host checks each launch's arguments against the kernel's parameter list). Device
// buffers are 256-byte aligned as cuMemAlloc's, and the build checks every load and store for
// its type's alignment (-fsanitize=alignment, aborting),
// as a GPU faults on a misaligned vector load that x86 would perform; cp.async checks its
// 16-byte alignment. Each buffer ends at a guard page (and starts after one), so a kernel that
// reads or writes past it stops the test with the kernel's name instead of touching host memory.
//
// The tensor-core kernels' PTX (gemm_s8.cu wraps each instruction in a function) is emulated
// too: mma.sync m16n8k32 and m8n8k16 (s8) warp-collectively with the PTX ISA's fragment layouts,
// and cp.async as the latest completion its semantics allow (a group's copies land when a
// cp.async.wait_group lets fewer groups stay in flight, so reading shared memory before the wait
// reads stale data; copies never waited for are an error). The sm_80 code paths are compiled
// (__CUDA_ARCH__ 800). Not emulated: concurrency between blocks, and timing. Float results can
// differ from a GPU's in the last bits: the GPU contracts a * b + c into FMAs where this build
// does not. x86-64 only (the fiber switch).

#define QTIER_CPU_EMULATION 1

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch is written for x86-64"
#endif

// ---------------------------------------------------------------------------------------------
// Fibers: one per CUDA thread of the running block.

// Saves the callee-saved registers on the current stack, stores the stack pointer in *from,
// loads `to` and restores the registers saved there (System V x86-64).
extern "C" void qtier_emu_switch(void** from, void* to);
asm(R"(
    .text
    .globl qtier_emu_switch
    .type qtier_emu_switch, @function
qtier_emu_switch:
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
    .size qtier_emu_switch, .-qtier_emu_switch
)");

namespace qtier_emu {

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

// One lane's operands of a warp-wide mma.
struct MmaSlot {
    unsigned a[4];
    unsigned b[2];
    // Which of its lane's mmas (1-based) deposited this: all 32 lanes take part in every one.
    unsigned serial = 0;
};

// One cp.async: `bytes` of 16 from `src`, the rest zeros.
struct AsyncCopy {
    void* dst;
    const void* src;
    int bytes;
};

// A thread's cp.async copies: issued since the last commit, and committed groups in flight.
struct AsyncCopies {
    std::vector<AsyncCopy> open;
    std::deque<std::vector<AsyncCopy>> committed;
};

struct Fiber {
    void* sp = nullptr;
    State state = State::Done;
    // threadIdx, in the running launch.
    unsigned x = 0, y = 0, z = 0;
    std::unique_ptr<unsigned char[]> stack;
};

constexpr size_t kStackBytes = 256 * 1024;

struct Block {
    std::vector<Fiber> fibers;
    void* scheduler_sp = nullptr;
    unsigned current = 0;
    std::function<void()> body;
    std::string error;
    // Warp shuffle and mma slots, two sets each used alternately (see shfl below), and how
    // many of each every thread has done.
    std::vector<unsigned long long> lanes[2];
    // Per slot: which of its lane's shuffles (1-based) wrote it, so a read of a lane that has
    // returned (whose slot holds an older value) is caught.
    std::vector<unsigned> lane_rounds[2];
    std::vector<unsigned> shuffles;
    std::vector<MmaSlot> mma_slots[2];
    std::vector<unsigned> mmas;
    // Per warp: its current mma's operands unpacked (A rows and B columns, 32 k each), and the
    // mma count they belong to.
    std::vector<signed char> mma_a, mma_b;
    std::vector<unsigned> mma_unpacked;
    // Per thread.
    std::vector<AsyncCopies> copies;
};

Block block;

}  // namespace qtier_emu

// ---------------------------------------------------------------------------------------------
// CUDA C++ spellings.

#define __global__
// Internal linkage (one translation unit): a `__shared__` static in an inline function then
// shares the section of the others instead of a COMDAT group (a "section type conflict").
#define __device__ static
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
// Every `__shared__` array lands in one section, which the linker brackets with
// __start_/__stop_ symbols: each block starts with all of it poisoned (see poison_shared). Not
// in a function template: g++ 12 ignores the section attribute there (kernels declare shared
// memory in their entry functions).
#define __shared__ static __attribute__((section("qtier_emu_shared")))
#define __align__(n) __attribute__((aligned(n)))

struct QtierEmuDim3 {
    unsigned x = 1, y = 1, z = 1;
};

// The running thread's coordinates (set by the scheduler before it switches to a fiber).
static QtierEmuDim3 threadIdx;
static QtierEmuDim3 blockIdx;
static QtierEmuDim3 blockDim;
static QtierEmuDim3 gridDim;

static void qtier_emu_wait(qtier_emu::State state) {
    qtier_emu::Fiber& self = qtier_emu::block.fibers[qtier_emu::block.current];
    self.state = state;
    qtier_emu_switch(&self.sp, qtier_emu::block.scheduler_sp);
}

static void __syncthreads() { qtier_emu_wait(qtier_emu::State::AtBlockBarrier); }

static void __syncwarp(unsigned = 0xffffffffu) { qtier_emu_wait(qtier_emu::State::AtWarpBarrier); }

// Every lane writes its value, the warp syncs, every lane reads its partner's. The slot sets
// alternate per call, so the next call's writes cannot overwrite values still to be read: a
// lane reaches that call's sync only after all lanes passed this one's. Reading a lane outside
// `mask`, or one that has returned (a GPU leaves that value undefined), is an error.
template <class T>
static T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(unsigned long long));
    qtier_emu::Block& b = qtier_emu::block;
    const unsigned thread = b.current;
    const unsigned lane = thread % 32, source = lane ^ ((unsigned)lane_mask & 31u);
    const unsigned round = ++b.shuffles[thread];
    unsigned long long* slots = &b.lanes[round & 1][thread / 32 * 32];
    unsigned* rounds = &b.lane_rounds[round & 1][thread / 32 * 32];
    std::memcpy(&slots[lane], &value, sizeof(T));
    rounds[lane] = round;
    __syncwarp();
    if (((mask >> lane) & 1u) == 0 || ((mask >> source) & 1u) == 0) {
        throw std::runtime_error("__shfl_xor_sync: lane " + std::to_string(lane) + " reads lane " +
                                 std::to_string(source) + ", not both in the mask");
    }
    if (rounds[source] != round) {
        throw std::runtime_error("__shfl_xor_sync: lane " + std::to_string(lane) + " of thread " +
                                 std::to_string(thread) + " reads lane " + std::to_string(source) +
                                 ", which has returned (its value is undefined on a GPU)");
    }
    T other;
    std::memcpy(&other, &slots[source], sizeof(T));
    return other;
}

template <class T>
static T min(T a, T b) {
    return b < a ? b : a;
}

template <class T>
static T max(T a, T b) {
    return a < b ? b : a;
}

// fma without a libm call per multiply-add (the build targets baseline x86-64, no FMA unit): the
// f64 product of two floats is exact, so only the final sum can round twice (rarely, one ulp).
static float qtier_emu_fmaf(float a, float b, float c) { return (float)((double)a * (double)b + (double)c); }
#define fmaf(a, b, c) qtier_emu_fmaf(a, b, c)

static float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
static float __fdiv_rn(float a, float b) { return a / b; }
static float __fmul_rn(float a, float b) { return a * b; }
static float __fadd_rn(float a, float b) { return a + b; }
static float __int_as_float(unsigned bits) { return std::bit_cast<float>(bits); }

// ---------------------------------------------------------------------------------------------
// The tensor-core kernels' instructions (gemm_s8.cu's wrappers).

// The emulator compiles the sm_80 code paths (mma.m16n8k32, cp.async).
#define __CUDA_ARCH__ 800

static int qtier_emu_s8(unsigned word, int k) { return (int)(signed char)(word >> (8 * (k % 4))); }

// The rows of A and columns of B of the warp's current mma, `k` values each, unpacked from the
// lanes' fragments by the first lane to get here after the exchange: every lane deposits its
// operands (slot sets alternate as for the shuffles), the warp syncs. `a_at(slot, row, k)` and
// `b_at(slot, col, k)` read one value out of the deposited fragments.
template <int M, int N, int K, class A, class B>
static void qtier_emu_mma_operands(const qtier_emu::MmaSlot& mine, A a_at, B b_at, const signed char** rows,
                                   const signed char** cols) {
    qtier_emu::Block& b = qtier_emu::block;
    const unsigned thread = b.current, warp = thread / 32;
    const unsigned serial = ++b.mmas[thread];
    qtier_emu::MmaSlot* slots = &b.mma_slots[serial & 1][warp * 32];
    slots[thread % 32] = mine;
    slots[thread % 32].serial = serial;
    __syncwarp();
    signed char* a = &b.mma_a[warp * 16 * 32];
    signed char* bt = &b.mma_b[warp * 8 * 32];
    if (b.mma_unpacked[warp] != serial) {
        for (unsigned lane = 0; lane < 32; ++lane) {
            if (slots[lane].serial != serial) {
                throw std::runtime_error("mma.sync without lane " + std::to_string(lane) + " of warp " +
                                         std::to_string(warp) + " (returned, or at another mma): the whole " +
                                         "warp must execute it");
            }
        }
        for (int row = 0; row < M; ++row) {
            for (int k = 0; k < K; ++k) {
                a[row * K + k] = (signed char)a_at(slots, row, k);
            }
        }
        for (int col = 0; col < N; ++col) {
            for (int k = 0; k < K; ++k) {
                bt[col * K + k] = (signed char)b_at(slots, col, k);
            }
        }
        b.mma_unpacked[warp] = serial;
    }
    *rows = a;
    *cols = bt;
}

template <int K>
static int qtier_emu_dot(const signed char* a, const signed char* b) {
    int sum = 0;
    for (int k = 0; k < K; ++k) {
        sum += (int)a[k] * (int)b[k];
    }
    return sum;
}

// Lane (g = lane / 4, t = lane % 4): A registers 0-3 hold row g, g + 8, g, g + 8 at k 4t..4t+3,
// same, 16+4t.., same; B registers 0-1 hold column g at k 4t.. and 16+4t..; D holds row g
// (d0, d1) and g + 8 (d2, d3) at columns 2t, 2t + 1.
static void qtier_mma_m16n8k32(int (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    const signed char *rows, *cols;
    qtier_emu_mma_operands<16, 8, 32>(
        {{a[0], a[1], a[2], a[3]}, {b0, b1}},
        [](const qtier_emu::MmaSlot* w, int row, int k) {
            return qtier_emu_s8(w[(row % 8) * 4 + (k % 16) / 4].a[(row >= 8) + 2 * (k >= 16)], k);
        },
        [](const qtier_emu::MmaSlot* w, int col, int k) {
            return qtier_emu_s8(w[col * 4 + (k % 16) / 4].b[k >= 16], k);
        },
        &rows, &cols);
    const int lane = (int)(qtier_emu::block.current % 32);
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
        d[i] += qtier_emu_dot<32>(rows + (g + (i >= 2 ? 8 : 0)) * 32, cols + (2 * t + (i & 1)) * 32);
    }
}

// Lane (g, t): A holds row g at k 4t..4t+3; B column g at k 4t..; D row g, columns 2t, 2t + 1.
static void qtier_mma_m8n8k16(int (&d)[2], unsigned a, unsigned b) {
    const signed char *rows, *cols;
    qtier_emu_mma_operands<8, 8, 16>(
        {{a, 0, 0, 0}, {b, 0}},
        [](const qtier_emu::MmaSlot* w, int row, int k) { return qtier_emu_s8(w[row * 4 + k / 4].a[0], k); },
        [](const qtier_emu::MmaSlot* w, int col, int k) { return qtier_emu_s8(w[col * 4 + k / 4].b[0], k); },
        &rows, &cols);
    const int lane = (int)(qtier_emu::block.current % 32);
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 2; ++i) {
        d[i] += qtier_emu_dot<16>(rows + g * 16, cols + (2 * t + i) * 16);
    }
}

// cp.async of 16 bytes needs both addresses 16-byte aligned (PTX ISA), whatever the source size:
// a GPU stops the kernel with a misaligned-address error.
static void qtier_cp_async16_zfill(void* dst, const void* src, int src_bytes) {
    if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0) {
        throw std::runtime_error("cp.async of 16 bytes with a misaligned address (shared " +
                                 std::to_string(reinterpret_cast<uintptr_t>(dst) % 16) + ", global " +
                                 std::to_string(reinterpret_cast<uintptr_t>(src) % 16) + " bytes past 16)");
    }
    qtier_emu::block.copies[qtier_emu::block.current].open.push_back({dst, src, src_bytes});
}

static void qtier_cp_async16(void* dst, const void* src) { qtier_cp_async16_zfill(dst, src, 16); }

static void qtier_cp_async_commit() {
    qtier_emu::AsyncCopies& mine = qtier_emu::block.copies[qtier_emu::block.current];
    mine.committed.push_back(std::move(mine.open));
    mine.open.clear();
}

template <int N>
static void qtier_cp_async_wait() {
    qtier_emu::AsyncCopies& mine = qtier_emu::block.copies[qtier_emu::block.current];
    while (mine.committed.size() > (size_t)N) {
        for (const qtier_emu::AsyncCopy& copy : mine.committed.front()) {
            if (copy.bytes < 0 || copy.bytes > 16) {
                throw std::runtime_error("cp.async source size " + std::to_string(copy.bytes) + " outside 0..16");
            }
            std::memset(copy.dst, 0, 16);
            std::memcpy(copy.dst, copy.src, (size_t)copy.bytes);
        }
        mine.committed.pop_front();
    }
}

static int __dp4a(int a, int b, int c) {
    for (int byte = 0; byte < 4; ++byte) {
        c += (int)(signed char)(a >> (8 * byte)) * (int)(signed char)(b >> (8 * byte));
    }
    return c;
}

// f32 -> f16 bits, round to nearest even (the GPU's cvt.rn.f16.f32).
static unsigned short qtier_emu_f32_to_f16_bits(float v) { return std::bit_cast<unsigned short>((_Float16)v); }

// ---------------------------------------------------------------------------------------------
// The kernel sources.

#include "../quant.cu"
#include "../encoder.cu"
#include "../gemm_f32.cu"
#include "../gemm_s8.cu"

// ---------------------------------------------------------------------------------------------
// Launching.

namespace {

// Launches a kernel with the driver API's parameter array (run_params).
using Launcher = void (*)(void**, const char*, QtierEmuDim3, QtierEmuDim3);

// A new fiber's entry: runs the block's kernel body as thread `current`, then returns to the
// scheduler for good.
[[noreturn]] void fiber_main() {
    qtier_emu::Block& b = qtier_emu::block;
    try {
        b.body();
    } catch (const std::exception& e) {
        if (b.error.empty()) {
            b.error = e.what();
        }
    }
    qtier_emu::Fiber& self = b.fibers[b.current];
    self.state = qtier_emu::State::Done;
    qtier_emu_switch(&self.sp, b.scheduler_sp);
    __builtin_unreachable();
}

// A fresh stack for `fiber` whose first switch enters fiber_main: the six registers
// qtier_emu_switch pops, then fiber_main's address for its `ret`, placed so that fiber_main
// starts with the stack alignment of a called function.
void prepare(qtier_emu::Fiber& fiber) {
    if (!fiber.stack) {
        fiber.stack = std::make_unique<unsigned char[]>(qtier_emu::kStackBytes);
    }
    auto top = reinterpret_cast<uintptr_t>(fiber.stack.get() + qtier_emu::kStackBytes) & ~uintptr_t{15};
    auto* slot = reinterpret_cast<uintptr_t*>(top);
    *--slot = 0;
    *--slot = reinterpret_cast<uintptr_t>(&fiber_main);
    for (int reg = 0; reg < 6; ++reg) {
        *--slot = 0;
    }
    fiber.sp = slot;
    fiber.state = qtier_emu::State::Runnable;
}

extern "C" unsigned char __start_qtier_emu_shared[];
extern "C" unsigned char __stop_qtier_emu_shared[];

// Shared memory holds whatever it held at a block's start on a GPU, never reliably zeros: a
// kernel that reads a shared value before writing it must not pass here by reading the zeros
// of a static array. Every byte 0xff: a NaN as a float, -1 as an integer.
void poison_shared() {
    std::memset(__start_qtier_emu_shared, 0xff, (size_t)(__stop_qtier_emu_shared - __start_qtier_emu_shared));
}

// Runs the current block's `threads` fibers to completion. Warp by warp, each warp runs as far as
// it can (its lanes in turn until each waits or returns, its warp barriers released as soon as
// all its running lanes reach them) before the next warp starts; then the block barrier is
// released once every running thread waits there. Running one warp ahead of the others is the
// order in which a missing __syncthreads shows (a warp overwrites shared memory others have not
// read). Warps go in index order, or with `reverse` from the last warp to the first and each
// warp's lanes from the last (the blocks of a launch alternate, and so do launches), so that a
// value read without the barrier that orders it after its write is stale in one of the two
// orders whichever thread writes it.
void run_block(unsigned threads, bool reverse) {
    qtier_emu::Block& b = qtier_emu::block;
    using qtier_emu::State;
    for (unsigned t = 0; t < threads; ++t) {
        prepare(b.fibers[t]);
    }
    std::fill(b.shuffles.begin(), b.shuffles.end(), 0u);
    for (std::vector<unsigned>& rounds : b.lane_rounds) {
        std::fill(rounds.begin(), rounds.end(), 0u);
    }
    std::fill(b.mmas.begin(), b.mmas.end(), 0u);
    for (std::vector<qtier_emu::MmaSlot>& slots : b.mma_slots) {
        std::fill(slots.begin(), slots.end(), qtier_emu::MmaSlot{});
    }
    std::fill(b.mma_unpacked.begin(), b.mma_unpacked.end(), 0u);
    for (qtier_emu::AsyncCopies& copies : b.copies) {
        copies.open.clear();
        copies.committed.clear();
    }
    const unsigned warps = (threads + 31) / 32;
    for (;;) {
        for (unsigned w = 0; w < warps; ++w) {
            const unsigned first = (reverse ? warps - 1 - w : w) * 32;
            const unsigned last = std::min(first + 32, threads);
            for (;;) {
                for (unsigned i = first; i < last; ++i) {
                    const unsigned t = reverse ? first + last - 1 - i : i;
                    qtier_emu::Fiber& fiber = b.fibers[t];
                    if (fiber.state == State::Runnable) {
                        b.current = t;
                        threadIdx = {fiber.x, fiber.y, fiber.z};
                        qtier_emu_switch(&b.scheduler_sp, fiber.sp);
                    }
                }
                bool all_at_warp_barrier = true, any_at_warp_barrier = false;
                for (unsigned t = first; t < last; ++t) {
                    const State state = b.fibers[t].state;
                    const bool waiting_or_done = state == State::AtWarpBarrier || state == State::Done;
                    all_at_warp_barrier = all_at_warp_barrier && waiting_or_done;
                    any_at_warp_barrier = any_at_warp_barrier || state == State::AtWarpBarrier;
                }
                if (!(all_at_warp_barrier && any_at_warp_barrier)) {
                    break;
                }
                for (unsigned t = first; t < last; ++t) {
                    if (b.fibers[t].state == State::AtWarpBarrier) {
                        b.fibers[t].state = State::Runnable;
                    }
                }
            }
        }
        if (!b.error.empty()) {
            // A thread threw: report that, not what the others run into without it. Left
            // suspended: their stacks are reset by the next launch.
            return;
        }
        unsigned running = 0, at_block = 0;
        for (unsigned t = 0; t < threads; ++t) {
            running += b.fibers[t].state != State::Done;
            at_block += b.fibers[t].state == State::AtBlockBarrier;
        }
        if (running == 0) {
            for (unsigned t = 0; t < threads; ++t) {
                if (!b.copies[t].open.empty() || !b.copies[t].committed.empty()) {
                    throw std::runtime_error("thread " + std::to_string(t) +
                                             " returned with cp.async copies never waited for");
                }
            }
            return;
        }
        if (at_block != running) {
            // Left suspended: their stacks are reset by the next launch.
            throw std::runtime_error("barrier deadlock: " + std::to_string(at_block) + " of " +
                                     std::to_string(running) + " running threads wait at __syncthreads, the others " +
                                     "at a warp barrier some running lanes of their warp never reach");
        }
        for (unsigned t = 0; t < threads; ++t) {
            if (b.fibers[t].state == State::AtBlockBarrier) {
                b.fibers[t].state = State::Runnable;
            }
        }
    }
}

// Launches so far: the first block of every other launch runs in reverse order (run_block).
unsigned long long launch_count = 0;

// Runs `kernel` (called `name`) over `grid` blocks of `block` threads with arguments `values`.
template <class... P>
void run(void (*kernel)(P...), const char* name, const std::tuple<P...>& values, QtierEmuDim3 grid,
         QtierEmuDim3 block) {
    const unsigned threads = block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
        throw std::runtime_error(std::string(name) + ": empty or oversized launch");
    }
    qtier_emu::Block& b = qtier_emu::block;
    if (b.fibers.size() < threads) {
        b.fibers.resize(threads);
    }
    const size_t lanes = (threads + 31) / 32 * 32;
    b.lanes[0].assign(lanes, 0);
    b.lanes[1].assign(lanes, 0);
    b.lane_rounds[0].assign(lanes, 0);
    b.lane_rounds[1].assign(lanes, 0);
    b.shuffles.assign(threads, 0);
    b.mma_slots[0].assign(lanes, {});
    b.mma_slots[1].assign(lanes, {});
    b.mmas.assign(threads, 0);
    const size_t warps = lanes / 32;
    b.mma_a.assign(warps * 16 * 32, 0);
    b.mma_b.assign(warps * 8 * 32, 0);
    b.mma_unpacked.assign(warps, 0);
    for (unsigned t = 0; t < threads; ++t) {
        b.fibers[t].x = t % block.x;
        b.fibers[t].y = t / block.x % block.y;
        b.fibers[t].z = t / (block.x * block.y);
    }
    b.copies.assign(threads, {});
    b.body = [&] { std::apply(kernel, values); };
    b.error.clear();
    blockDim = block;
    gridDim = grid;
    for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                poison_shared();
                run_block(threads, ((launch_count + x + y + z) & 1) != 0);
                if (!b.error.empty()) {
                    throw std::runtime_error(std::string(name) + ": " + b.error);
                }
            }
        }
    }
}

// The driver API's launch: `params[i]` points to parameter i, read with the kernel's own type as
// the driver copies sizeof(parameter) bytes from it. (Whether the host passed what the kernel
// takes is checked on the host, against the parameter lists the NVRTC test checks.)
template <class... P, size_t... I>
void run_params(void (*kernel)(P...), void** params, const char* name, QtierEmuDim3 grid, QtierEmuDim3 block,
                std::index_sequence<I...>) {
    auto read = [&](auto typed, size_t index) {
        decltype(typed) value;
        std::memcpy(&value, params[index], sizeof value);
        return value;
    };
    run(kernel, name, std::tuple<P...>{read(P{}, I)...}, grid, block);
}

#define QTIER_EMU_KERNEL(name)                                                                        \
    {#name, [](void** p, const char* n, QtierEmuDim3 g, QtierEmuDim3 b) {                            \
         run_params(name, p, n, g, b, std::make_index_sequence<qtier_emu_arity(name)>{});            \
     }}

template <class... P>
constexpr size_t qtier_emu_arity(void (*)(P...)) {
    return sizeof...(P);
}

const std::map<std::string, Launcher>& launchers() {
    static const std::map<std::string, Launcher> table = {
        QTIER_EMU_KERNEL(qtier_quantize_rows),
        QTIER_EMU_KERNEL(qtier_layernorm_rows),
        QTIER_EMU_KERNEL(qtier_embedding_layernorm),
        QTIER_EMU_KERNEL(qtier_attention),
        QTIER_EMU_KERNEL(qtier_gelu_erf),
        QTIER_EMU_KERNEL(qtier_residual_add),
        QTIER_EMU_KERNEL(qtier_mean_pool),
        QTIER_EMU_KERNEL(qtier_gemm_f32),
        QTIER_EMU_KERNEL(qtier_gemm_s8_dp4a),
        QTIER_EMU_KERNEL(qtier_gemm_s8_dp4a_splitk),
        QTIER_EMU_KERNEL(qtier_gemm_s8_mma8816_64x64),
        QTIER_EMU_KERNEL(qtier_gemm_s8_mma16832_64x64),
        QTIER_EMU_KERNEL(qtier_gemm_s8_mma16832_128x128),
        QTIER_EMU_KERNEL(qtier_outlier_epilogue),
    };
    return table;
}

std::mutex launch_mutex;

// The kernel running now, for the out-of-bounds report (read by the signal handler).
const char* volatile running_kernel = nullptr;

// The handlers on_fault replaced (Rust's, which reports stack overflows), for faults outside
// kernels.
struct sigaction previous_segv {}, previous_bus {};

// SIGSEGV (SIGBUS) while a kernel runs: almost surely an access to a guard page of the device
// memory (qtier_emu_alloc), which a GPU would report as an illegal address or read as garbage.
// Says which kernel and where, then aborts (the test fails with the message on stderr).
void on_fault(int signal, siginfo_t* info, void*) {
    const char* kernel = running_kernel;
    if (kernel == nullptr) {
        // Not ours: put the previous handler back and let the access fault again into it.
        sigaction(signal, signal == SIGBUS ? &previous_bus : &previous_segv, nullptr);
        return;
    }
    char message[256];
    const int len = std::snprintf(message, sizeof message,
                                  "qtier CUDA emulator: %s in kernel %s at address %p: an access outside device "
                                  "memory (past the end of a buffer, or before its start)\n",
                                  signal == SIGBUS ? "SIGBUS" : "SIGSEGV", kernel, info->si_addr);
    if (len > 0) {
        [[maybe_unused]] ssize_t written = write(STDERR_FILENO, message, (size_t)len);
    }
    std::abort();
}

// The handler runs on an alternate stack: a fault on a fiber's stack must still be reported.
void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction action {};
        action.sa_sigaction = on_fault;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        sigaction(SIGSEGV, &action, &previous_segv);
        sigaction(SIGBUS, &action, &previous_bus);
    });
    thread_local std::unique_ptr<unsigned char[]> alternate;
    if (!alternate) {
        const size_t bytes = 64 * 1024;
        alternate = std::make_unique<unsigned char[]>(bytes);
        stack_t stack{};
        stack.ss_sp = alternate.get();
        stack.ss_size = bytes;
        sigaltstack(&stack, nullptr);
    }
}

size_t page_bytes() {
    static const size_t bytes = (size_t)sysconf(_SC_PAGESIZE);
    return bytes;
}

// `bytes` rounded up to cuMemAlloc's 256-byte alignment: a buffer's extent up to its guard page.
size_t aligned_bytes(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Pages holding aligned_bytes(bytes), between two guard pages.
size_t mapped_bytes(size_t bytes) {
    const size_t page = page_bytes();
    return (aligned_bytes(bytes) + page - 1) / page * page + 2 * page;
}

}  // namespace

// Device memory: `bytes` zeroed bytes, 256-byte aligned as cuMemAlloc's, ending (after rounding
// up to 256) at an inaccessible guard page with another before the first page, so that a
// kernel reading or writing past a buffer faults (see on_fault) instead of touching host
// memory. Null when the memory cannot be had.
extern "C" void* qtier_emu_alloc(size_t bytes) {
    const size_t page = page_bytes();
    const size_t total = mapped_bytes(bytes);
    void* base = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        return nullptr;
    }
    auto* first = static_cast<unsigned char*>(base);
    if (mprotect(first, page, PROT_NONE) != 0 || mprotect(first + total - page, page, PROT_NONE) != 0) {
        munmap(base, total);
        return nullptr;
    }
    return first + total - page - aligned_bytes(bytes);
}

// Frees what qtier_emu_alloc(bytes) returned.
extern "C" void qtier_emu_free(void* ptr, size_t bytes) {
    const size_t page = page_bytes();
    const size_t total = mapped_bytes(bytes);
    auto* end = static_cast<unsigned char*>(ptr) + aligned_bytes(bytes) + page;
    munmap(end - total, total);
}

// Runs kernel `name` over `grid` x `block` with the driver API's parameter array (libcuda.cpp's
// cuLaunchKernel); 0 on success, else 1 with a message in `error` (NUL-terminated, truncated to
// `error_len`). One launch at a time.
extern "C" int qtier_emu_launch_params(const char* name, const unsigned* grid, const unsigned* block, void** params,
                                       char* error, size_t error_len) {
    std::lock_guard<std::mutex> lock(launch_mutex);
    install_fault_handler();
    try {
        const auto& table = launchers();
        const auto found = table.find(name);
        if (found == table.end()) {
            throw std::runtime_error(std::string(name) + " is not a kernel the emulator knows");
        }
        running_kernel = found->first.c_str();
        ++launch_count;
        found->second(params, name, QtierEmuDim3{grid[0], grid[1], grid[2]},
                      QtierEmuDim3{block[0], block[1], block[2]});
        running_kernel = nullptr;
        return 0;
    } catch (const std::exception& e) {
        running_kernel = nullptr;
        std::snprintf(error, error_len, "%s", e.what());
        return 1;
    }
}

// Whether the emulator has kernel `name`.
extern "C" int qtier_emu_has_kernel(const char* name) { return launchers().count(name) != 0; }
