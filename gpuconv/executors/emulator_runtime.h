// gpuconv emulator runtime: fibers, the block scheduler and the C API that emulator.py calls through ctypes.
// Included once, at the end of the generated translation unit (after emulator_shim.h, the kernels and the
// kernel table). See docs/emulator.md for the model.
#pragma once

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#include <stdarg.h>

#include <algorithm>
#include <atomic>
#include <new>
#include <thread>
#include <vector>

#if !defined(__x86_64__) || defined(GPUCONV_EMU_UCONTEXT)
#define GPUCONV_EMU_USE_UCONTEXT 1
#include <ucontext.h>
#endif

#ifndef GPUCONV_EMU_DYNAMIC_SMEM_CAPACITY
#error "the build defines GPUCONV_EMU_DYNAMIC_SMEM_CAPACITY (bytes of the dynamic shared memory buffer)"
#endif
#ifndef GPUCONV_EMU_SMEM_REDZONE
#error "the build defines GPUCONV_EMU_SMEM_REDZONE (bytes around the dynamic shared memory buffer)"
#endif

// The dynamic shared memory buffer: defined by the build (an assembler file) together with every
// `extern __shared__` array of the kernels, all at the same address, with redzones of GPUCONV_EMU_SMEM_REDZONE
// bytes on both sides.
extern "C" thread_local unsigned char gpuconv_emu_dynamic_smem[];

// =============================================================================================================
// Context switch. x86-64: a hand-written switch of the callee-saved registers (no syscall). Elsewhere, or with
// -DGPUCONV_EMU_UCONTEXT: ucontext (swapcontext saves the signal mask with a syscall: ~10x slower).
// =============================================================================================================
#ifndef GPUCONV_EMU_USE_UCONTEXT
extern "C" {
void gpuconv_emu_switch(void** save_sp, void* next_sp) __attribute__((visibility("hidden")));
void gpuconv_emu_fiber_entry() __attribute__((visibility("hidden")));
}
asm(R"(
    .text
    .p2align 4
    .globl gpuconv_emu_switch
    .hidden gpuconv_emu_switch
    .type gpuconv_emu_switch, @function
gpuconv_emu_switch:
    .cfi_startproc
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
    .cfi_endproc
    .size gpuconv_emu_switch, .-gpuconv_emu_switch

    .p2align 4
    .globl gpuconv_emu_fiber_entry
    .hidden gpuconv_emu_fiber_entry
    .type gpuconv_emu_fiber_entry, @function
gpuconv_emu_fiber_entry:
    .cfi_startproc
    .cfi_undefined rip
    andq $-16, %rsp
    call gpuconv_emu_fiber_main
    ud2
    .cfi_endproc
    .size gpuconv_emu_fiber_entry, .-gpuconv_emu_fiber_entry
)");
#endif

extern "C" void gpuconv_emu_fiber_main() __attribute__((visibility("hidden"), noreturn));

namespace gpuconv_emu {

thread_local Block* tls_block = nullptr;

// Shared-memory layout of this library, set once by gpuconv_emu_configure: the static __shared__ variables as
// (offset, size) ranges of the module's TLS segment, and the segment offset of the dynamic buffer.
static std::vector<std::pair<std::size_t, std::size_t>> g_static_smem;
static std::size_t g_dynamic_smem_offset = 0;

// ---- fiber stacks: mmap'd with a guard region below, reused across blocks and launches -----------------------
constexpr std::size_t kGuardBytes = 64 * 1024;

struct Stack {
    char* map = nullptr;
    std::size_t map_bytes = 0;
    char* lo = nullptr;
    std::size_t bytes = 0;
    std::size_t color = 0;              // the first frame starts this far below the top (see take_stack)
#ifdef GPUCONV_EMU_USE_UCONTEXT
    ucontext_t uc;
#endif
};

// ---- per OS thread: the block being run, the fibers, the stack pool --------------------------------------------
struct Worker : Block {
    std::vector<Fiber> fiber_store;
    std::vector<unsigned> order;
    std::vector<unsigned> warp_store;
    std::vector<Stack*> free_stacks;
    std::vector<Stack*> all_stacks;
    std::size_t stack_bytes = 0;
    void* sched_sp = nullptr;
#ifdef GPUCONV_EMU_USE_UCONTEXT
    ucontext_t sched_uc;
#endif
    const void* sched_stack_bottom = nullptr;   // AddressSanitizer fiber annotations
    std::size_t sched_stack_size = 0;
    void* sched_fake_stack = nullptr;
    const KernelInfo* info = nullptr;
    void** args = nullptr;
    bool failed = false;
    unsigned runnable = 0;              // fibers not started or ready to resume
    unsigned done = 0;                  // fibers that exited
    unsigned at_block_barrier = 0;      // fibers waiting at a block barrier
    unsigned barrier_count = 0;         // predicates of those that are true (__syncthreads_count)
    char error[4096];

    ~Worker() { release_stacks(); }

    void release_stacks() {
        for (Stack* s : all_stacks) {
            munmap(s->map, s->map_bytes);
            delete s;
        }
        all_stacks.clear();
        free_stacks.clear();
    }

    Stack* take_stack() {
        if (free_stacks.empty()) {
            Stack* s = new Stack;
            s->map_bytes = stack_bytes + kGuardBytes;
            void* m = mmap(nullptr, s->map_bytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
            if (m == MAP_FAILED) {
                delete s;
                return nullptr;
            }
            mprotect(m, kGuardBytes, PROT_NONE);   // an overflow faults instead of corrupting a neighbour
            s->map = static_cast<char*>(m);
            s->lo = s->map + kGuardBytes;
            s->bytes = stack_bytes;
            // Stack tops 2^k bytes apart would map to the same cache sets: stagger them by cache lines.
            s->color = (all_stacks.size() % 61) * 64;
            all_stacks.push_back(s);
            return s;
        }
        Stack* s = free_stacks.back();
        free_stacks.pop_back();
#if defined(__SANITIZE_ADDRESS__)
        __asan_unpoison_memory_region(s->lo, s->bytes);   // frames of fibers abandoned by an earlier error
#endif
        return s;
    }
};

static pthread_key_t g_worker_key;
static pthread_once_t g_worker_once = PTHREAD_ONCE_INIT;

static Worker* worker() {
    pthread_once(&g_worker_once, [] { pthread_key_create(&g_worker_key, [](void* w) { delete static_cast<Worker*>(w); }); });
    Worker* w = static_cast<Worker*>(pthread_getspecific(g_worker_key));
    if (!w) {
        w = new Worker;
        pthread_setspecific(g_worker_key, w);
    }
    return w;
}

static inline Worker* current_worker() { return static_cast<Worker*>(tls_block); }

// ---- switching between the scheduler and a fiber ----------------------------------------------------------------
static inline void switch_context(void** save, void* next) {
#ifdef GPUCONV_EMU_USE_UCONTEXT
    swapcontext(static_cast<ucontext_t*>(*save), static_cast<ucontext_t*>(next));
#else
    gpuconv_emu_switch(save, next);
#endif
}

static void* initial_context(Stack* s) {
#ifdef GPUCONV_EMU_USE_UCONTEXT
    getcontext(&s->uc);
    s->uc.uc_stack.ss_sp = s->lo;
    s->uc.uc_stack.ss_size = s->bytes;
    s->uc.uc_link = nullptr;
    makecontext(&s->uc, gpuconv_emu_fiber_main, 0);
    return &s->uc;
#else
    // gpuconv_emu_switch pops six callee-saved registers, then returns into gpuconv_emu_fiber_entry.
    auto top = reinterpret_cast<std::uintptr_t>(s->lo + s->bytes - s->color) & ~std::uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top) - 8;
    for (int i = 0; i < 6; ++i) sp[i] = nullptr;
    sp[6] = reinterpret_cast<void*>(&gpuconv_emu_fiber_entry);
    sp[7] = nullptr;
    return sp;
#endif
}

// Scheduler -> fiber f (returns when f suspends, finishes or fails).
static void resume(Worker* w, Fiber* f) {
    w->cur = f;
    f->state = State::Running;
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(&w->sched_fake_stack, f->stack->lo, f->stack->bytes);
#endif
    switch_context(&w->sched_sp, f->sp);
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(w->sched_fake_stack, nullptr, nullptr);
#endif
    w->cur = nullptr;
}

// Fiber -> scheduler. `final` when the fiber never runs again (finished or failed).
static void to_scheduler(Worker* w, Fiber* f, bool final) {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(final ? nullptr : &f->asan_fake_stack, w->sched_stack_bottom, w->sched_stack_size);
#else
    (void)final;
#endif
    switch_context(&f->sp, w->sched_sp);
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(f->asan_fake_stack, &w->sched_stack_bottom, &w->sched_stack_size);
#endif
}

static const char* state_name(State s) {
    switch (s) {
        case State::NotStarted: return "not started";
        case State::Ready: case State::Running: return "running";
        case State::AtBlockBarrier: return "at a block barrier";
        case State::AtWarpOp: return "at a warp operation";
        case State::Done: return "exited";
    }
    return "?";
}

// printf into the worker's error buffer, prefixed with the kernel and block.
static void set_error(Worker* w, const char* fmt, va_list ap) {
    const int n = std::snprintf(w->error, sizeof w->error, "%s, block (%u,%u,%u): ", w->kernel, w->block_idx.x,
                                w->block_idx.y, w->block_idx.z);
    std::vsnprintf(w->error + n, sizeof w->error - n, fmt, ap);
    w->failed = true;
}

static void error(Worker* w, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static void error(Worker* w, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_error(w, fmt, ap);
    va_end(ap);
}

// Fails the launch from inside a fiber: the message names the thread; the fiber is abandoned.
void fail(const char* fmt, ...) {
    Worker* w = current_worker();
    Fiber* f = w->cur;
    char msg[3072];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    error(w, "thread (%u,%u,%u): %s", f->tid.x, f->tid.y, f->tid.z, msg);
    f->state = State::Done;
    to_scheduler(w, f, true);
    __builtin_unreachable();
}

void suspend(State state, const char* what, const char* file, int line) {
    Worker* w = current_worker();
    Fiber* f = w->cur;
    f->state = state;
    f->wait_what = what;
    f->wait_file = file;
    f->wait_line = line;
    to_scheduler(w, f, false);
}

unsigned block_barrier(int pred, const char* what, const char* file, int line) {
    Worker* w = current_worker();
    Fiber* f = w->cur;
    ++w->at_block_barrier;
    w->barrier_count += pred != 0;
    suspend(State::AtBlockBarrier, what, file, line);
    return static_cast<unsigned>(f->result);
}

static unsigned existing_lanes(const Worker* w, unsigned warp_base) {
    const unsigned n = w->nthreads - warp_base;
    return n >= 32 ? 0xFFFFFFFFu : (1u << n) - 1u;
}

static bool is_warp_op_name_shuffle(WarpOp op) {
    return op == WarpOp::ShflIdx || op == WarpOp::ShflUp || op == WarpOp::ShflDown || op == WarpOp::ShflXor;
}

// Every lane of `lanes` (bit set) is at the same warp operation: compute each one's result and release it.
static void complete_warp_op(Worker* w, unsigned warp_base, unsigned lanes) {
    Fiber* lane_fiber[32];
    for (unsigned j = 0; j < 32; ++j) lane_fiber[j] = (lanes >> j & 1u) ? &w->fibers[warp_base + j] : nullptr;
    unsigned ballot = 0;
    for (unsigned j = 0; j < 32; ++j)
        if (lane_fiber[j] && lane_fiber[j]->value) ballot |= 1u << j;
    for (unsigned j = 0; j < 32; ++j) {
        Fiber* g = lane_fiber[j];
        if (!g) continue;
        unsigned long long r = 0;
        const unsigned long long poison = g->value_size >= 8 ? ~0ULL : ((1ULL << (8 * g->value_size)) - 1ULL);
        const int width = g->width;
        const unsigned seg = j & ~unsigned(width - 1), last = seg + unsigned(width) - 1u;
        switch (g->op) {
            case WarpOp::Sync: break;
            case WarpOp::ShflIdx: case WarpOp::ShflUp: case WarpOp::ShflDown: case WarpOp::ShflXor: {
                long src;
                if (g->op == WarpOp::ShflIdx) src = long(seg) + (g->lane_arg & (width - 1));
                else if (g->op == WarpOp::ShflUp) src = long(j) - g->lane_arg;
                else if (g->op == WarpOp::ShflDown) src = long(j) + g->lane_arg;
                else src = long(j ^ (unsigned(g->lane_arg) & 31u));
                if (src < long(seg) && g->op == WarpOp::ShflUp) r = g->value;
                else if (src > long(last)) r = g->value;
                else if (src >= 0 && src < 32 && lane_fiber[src]) r = lane_fiber[src]->value;
                else r = poison;   // the source lane is not taking part: undefined on the GPU
                break;
            }
            case WarpOp::Ballot: r = ballot; break;
            case WarpOp::Any: r = ballot != 0; break;
            case WarpOp::All: r = ballot == lanes; break;
            case WarpOp::MatchAny: case WarpOp::MatchAll: {
                unsigned same = 0;
                for (unsigned k = 0; k < 32; ++k)
                    if (lane_fiber[k] && lane_fiber[k]->value == g->value) same |= 1u << k;
                r = g->op == WarpOp::MatchAny ? same : (same == lanes ? lanes : 0u);
                break;
            }
            default: {   // integer reductions over 32-bit values
                unsigned acc_u = 0;
                int acc_i = 0;
                bool first = true;
                for (unsigned k = 0; k < 32; ++k) {
                    if (!lane_fiber[k]) continue;
                    const unsigned u = static_cast<unsigned>(lane_fiber[k]->value);
                    const int i = static_cast<int>(u);
                    switch (g->op) {
                        case WarpOp::ReduceAddU: acc_u += u; break;
                        case WarpOp::ReduceMinU: acc_u = first || u < acc_u ? u : acc_u; break;
                        case WarpOp::ReduceMaxU: acc_u = first || u > acc_u ? u : acc_u; break;
                        case WarpOp::ReduceMinI: acc_i = first || i < acc_i ? i : acc_i; break;
                        case WarpOp::ReduceMaxI: acc_i = first || i > acc_i ? i : acc_i; break;
                        case WarpOp::ReduceAnd: acc_u = first ? u : (acc_u & u); break;
                        case WarpOp::ReduceOr: acc_u |= u; break;
                        case WarpOp::ReduceXor: acc_u ^= u; break;
                        default: break;
                    }
                    first = false;
                }
                r = (g->op == WarpOp::ReduceMinI || g->op == WarpOp::ReduceMaxI) ? static_cast<unsigned>(acc_i) : acc_u;
                break;
            }
        }
        g->result = r;
        if (g != w->cur) {
            g->state = State::Ready;
            ++w->runnable;
        }
    }
    w->warp_arrived[warp_base / 32] &= ~lanes;
}

unsigned long long warp_op(WarpOp op, unsigned mask, unsigned long long value, int value_size, int lane_arg,
                           int width, const char* what, const char* file, int line) {
    Worker* w = current_worker();
    Fiber* f = w->cur;
    const unsigned lane = f->linear & 31u, warp_base = f->linear & ~31u;
    if (!(mask >> lane & 1u))
        fail("%s (%s:%d) with mask 0x%08x that does not contain the calling lane %u", what, file, line, mask, lane);
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail("%s (%s:%d) with width %d (must be a power of two <= 32)", what, file, line, width);
    const unsigned lanes = mask & existing_lanes(w, warp_base);
    for (unsigned j = 0; j < 32; ++j)
        if ((lanes >> j & 1u) && w->fibers[warp_base + j].state == State::Done)
            fail("%s (%s:%d) with mask 0x%08x, but lane %u of the warp has exited", what, file, line, mask, j);
    f->op = op;
    f->mask = mask;
    f->value = value;
    f->value_size = value_size;
    f->lane_arg = lane_arg;
    f->width = width;
    f->wait_what = what;
    f->wait_file = file;
    f->wait_line = line;
    unsigned& arrived = w->warp_arrived[warp_base / 32];
    arrived |= 1u << lane;
    if ((arrived & lanes) == lanes) {   // the last lane to arrive checks agreement and computes every result
        for (unsigned j = 0; j < 32; ++j) {
            const Fiber& g = w->fibers[warp_base + j];
            if (!(lanes >> j & 1u)) continue;
            if (g.op != op || g.mask != mask || (is_warp_op_name_shuffle(op) && g.width != width))
                fail("%s (%s:%d) with mask 0x%08x meets lane %u at %s (%s:%d) with mask 0x%08x", what, file, line,
                     mask, j, g.wait_what, g.wait_file, g.wait_line, g.mask);
        }
        complete_warp_op(w, warp_base, lanes);
        return f->result;
    }
    suspend(State::AtWarpOp, what, file, line);
    return f->result;
}

// Lanes of the calling warp whose threads have not exited.
static unsigned live_lanes(const Worker* w, unsigned warp_base) {
    unsigned m = 0;
    const unsigned lanes = existing_lanes(w, warp_base);
    for (unsigned j = 0; j < 32; ++j)
        if ((lanes >> j & 1u) && w->fibers[warp_base + j].state != State::Done) m |= 1u << j;
    return m;
}

// A lane exits: a lane of its warp that waits for it can never be released.
static void check_exit(Worker* w, Fiber* f) {
    const unsigned lane = f->linear & 31u, warp_base = f->linear & ~31u;
    const unsigned waiting = w->warp_arrived[warp_base / 32];
    for (unsigned j = 0; j < 32; ++j) {
        const Fiber& g = w->fibers[warp_base + j];
        if ((waiting >> j & 1u) && (g.mask >> lane & 1u))
            fail("exited while lane %u waits for it at %s (%s:%d) with mask 0x%08x", j, g.wait_what, g.wait_file,
                 g.wait_line, g.mask);
    }
}

// ---- shared memory poisoning: every byte 0xFF at block start (NaN for floats, -1 for integers) --------------------
static void poison_shared_memory(std::size_t dynamic_bytes) {
    unsigned char* dyn = gpuconv_emu_dynamic_smem;
    unsigned char* tls_base = dyn - g_dynamic_smem_offset;
    for (const auto& r : g_static_smem) std::memset(tls_base + r.first, 0xFF, r.second);
    std::memset(dyn, 0xFF, dynamic_bytes);
}

// ---- scheduling order within a block ---------------------------------------------------------------------------
enum Order { kForward = 0, kReverse = 1, kShuffle = 2 };

static inline unsigned long long splitmix64(unsigned long long& s) {
    unsigned long long z = (s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void next_order(std::vector<unsigned>& order, unsigned n, int mode, unsigned long long& rng) {
    for (unsigned i = 0; i < n; ++i) order[i] = mode == kReverse ? n - 1 - i : i;
    if (mode == kShuffle)   // Fisher-Yates from the identity: a function of the seed only
        for (unsigned i = n - 1; i > 0; --i) std::swap(order[i], order[splitmix64(rng) % (i + 1)]);
}

static bool same_site(const Fiber& a, const Fiber& b) {
    return a.wait_line == b.wait_line && (a.wait_file == b.wait_file || std::strcmp(a.wait_file, b.wait_file) == 0);
}

// No fiber can run and not all are at the block barrier: report why (a deadlocked warp operation, or threads
// that exited while others wait at a barrier).
static void report_stuck_block(Worker* w) {
    const unsigned n = w->nthreads;
    const Fiber *waiter = nullptr, *blocked = nullptr, *exited = nullptr;
    for (unsigned i = 0; i < n; ++i) {
        const Fiber& f = w->fibers[i];
        if (f.state == State::Done && !exited) exited = &f;
        else if (f.state == State::AtBlockBarrier && !blocked) blocked = &f;
        else if (f.state == State::AtWarpOp && !waiter) waiter = &f;
    }
    if (waiter) {
        const unsigned warp_base = waiter->linear & ~31u;
        const unsigned missing = waiter->mask & existing_lanes(w, warp_base) & ~w->warp_arrived[warp_base / 32];
        const unsigned j = missing ? static_cast<unsigned>(__builtin_ctz(missing)) : 0u;
        const Fiber& other = w->fibers[warp_base + j];
        const bool at_barrier = other.state == State::AtBlockBarrier;
        error(w, "deadlock: thread (%u,%u,%u) waits at %s (%s:%d) with mask 0x%08x for lane %u, which is %s%s%s%s",
              waiter->tid.x, waiter->tid.y, waiter->tid.z, waiter->wait_what, waiter->wait_file, waiter->wait_line,
              waiter->mask, j, state_name(other.state), at_barrier ? " " : "", at_barrier ? other.wait_what : "",
              at_barrier ? " (a warp operation cannot complete across a block barrier)" : "");
        return;
    }
    error(w, "divergent barrier: %u of %u threads wait at %s (%s:%d) but %u threads exited without reaching it "
          "(e.g. thread (%u,%u,%u)); every thread of the block must reach each __syncthreads",
          w->at_block_barrier, n, blocked->wait_what, blocked->wait_file, blocked->wait_line, w->done, exited->tid.x,
          exited->tid.y, exited->tid.z);
}

// Runs one block to completion. Returns false (with w->error set) on a failed check.
static bool run_block(Worker* w, const uint3 block_idx, unsigned long long block_linear, std::size_t dynamic_bytes,
                      int mode, unsigned long long seed) {
    const unsigned n = w->nthreads;
    w->block_idx = block_idx;
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = w->fibers[i];
        f = Fiber{};
        f.linear = i;
        f.tid = uint3{i % w->block_dim.x, (i / w->block_dim.x) % w->block_dim.y, i / (w->block_dim.x * w->block_dim.y)};
    }
    std::fill(w->warp_store.begin(), w->warp_store.end(), 0u);
    w->runnable = n;
    w->done = 0;
    w->at_block_barrier = 0;
    w->barrier_count = 0;
    poison_shared_memory(dynamic_bytes);
    unsigned long long rng = seed ^ (0xD1B54A32D192ED03ULL * (block_linear + 1));
    if (mode != kShuffle) next_order(w->order, n, mode, rng);

    for (;;) {
        while (w->runnable > 0) {   // rounds: resume the runnable fibers in the round's order
            if (mode == kShuffle) next_order(w->order, n, mode, rng);
            for (unsigned k = 0; k < n; ++k) {
                Fiber* f = &w->fibers[w->order[k]];
                if (f->state == State::NotStarted) {
                    f->stack = w->take_stack();
                    if (!f->stack) {
                        error(w, "cannot allocate a %zu-byte fiber stack", w->stack_bytes);
                        return false;
                    }
                    f->sp = initial_context(f->stack);
                } else if (f->state != State::Ready) {
                    continue;
                }
                --w->runnable;
                resume(w, f);
                if (w->failed) return false;
                if (f->state == State::Done) {
                    ++w->done;
                    w->free_stacks.push_back(f->stack);
                    f->stack = nullptr;
                }
            }
        }
        if (w->done == n) return true;
        if (w->done + w->at_block_barrier != n || w->done != 0) {
            report_stuck_block(w);
            return false;
        }
        const Fiber& first = w->fibers[0];   // every thread is at a block barrier: release them
        for (unsigned i = 0; i < n; ++i) {
            Fiber& f = w->fibers[i];
            if (!same_site(f, first)) {
                error(w, "divergent barrier: thread (%u,%u,%u) waits at %s (%s:%d) while thread (0,0,0) waits at "
                      "%s (%s:%d)", f.tid.x, f.tid.y, f.tid.z, f.wait_what, f.wait_file, f.wait_line,
                      first.wait_what, first.wait_file, first.wait_line);
                return false;
            }
            f.result = w->barrier_count;
            f.state = State::Ready;
        }
        w->runnable = n;
        w->at_block_barrier = 0;
        w->barrier_count = 0;
    }
}

// Runs blocks [first, ...) taking block numbers from `next` until the grid is done or a block fails.
struct LaunchShared {
    const KernelInfo* info;
    void** args;
    dim3 grid, block;
    std::size_t dynamic_bytes;
    int mode;
    unsigned long long seed;
    std::size_t stack_bytes;
    std::atomic<unsigned long long> next{0};
    std::atomic<bool> failed{false};
    pthread_mutex_t error_lock = PTHREAD_MUTEX_INITIALIZER;
    char* error_out;
    std::size_t error_cap;
};

static void run_blocks(LaunchShared* L) {
    Worker* w = worker();
    const unsigned n = L->block.x * L->block.y * L->block.z;
    if (w->stack_bytes != L->stack_bytes) {
        w->release_stacks();
        w->stack_bytes = L->stack_bytes;
    }
    if (w->fiber_store.size() < n) w->fiber_store.resize(n);
    w->order.resize(n);
    w->warp_store.assign((n + 31) / 32, 0u);
    w->fibers = w->fiber_store.data();
    w->warp_arrived = w->warp_store.data();
    w->nthreads = n;
    w->block_dim = L->block;
    w->grid_dim = L->grid;
    w->kernel = L->info->name;
    w->info = L->info;
    w->args = L->args;
    w->failed = false;
    w->cur = nullptr;
#ifdef GPUCONV_EMU_USE_UCONTEXT
    w->sched_sp = &w->sched_uc;
#endif
    tls_block = w;
#if defined(__SANITIZE_ADDRESS__)
    unsigned char* dyn = gpuconv_emu_dynamic_smem;
    __asan_poison_memory_region(dyn - GPUCONV_EMU_SMEM_REDZONE, GPUCONV_EMU_SMEM_REDZONE);
    __asan_poison_memory_region(dyn + L->dynamic_bytes,
                                GPUCONV_EMU_DYNAMIC_SMEM_CAPACITY - L->dynamic_bytes + GPUCONV_EMU_SMEM_REDZONE);
#endif
    const unsigned long long total = static_cast<unsigned long long>(L->grid.x) * L->grid.y * L->grid.z;
    for (;;) {
        if (L->failed.load(std::memory_order_relaxed)) break;
        const unsigned long long b = L->next.fetch_add(1, std::memory_order_relaxed);
        if (b >= total) break;
        const uint3 bidx{static_cast<unsigned>(b % L->grid.x), static_cast<unsigned>((b / L->grid.x) % L->grid.y),
                         static_cast<unsigned>(b / (static_cast<unsigned long long>(L->grid.x) * L->grid.y))};
        if (!run_block(w, bidx, b, L->dynamic_bytes, L->mode, L->seed)) {
            pthread_mutex_lock(&L->error_lock);
            if (!L->failed.exchange(true)) std::snprintf(L->error_out, L->error_cap, "%s", w->error);
            pthread_mutex_unlock(&L->error_lock);
            // fibers abandoned mid-block keep their stacks: hand them back for the next launch
            for (unsigned i = 0; i < n; ++i)
                if (w->fibers[i].stack) w->free_stacks.push_back(w->fibers[i].stack);
            break;
        }
    }
#if defined(__SANITIZE_ADDRESS__)
    __asan_unpoison_memory_region(dyn - GPUCONV_EMU_SMEM_REDZONE,
                                  GPUCONV_EMU_DYNAMIC_SMEM_CAPACITY + 2 * GPUCONV_EMU_SMEM_REDZONE);
#endif
    tls_block = nullptr;
}

}  // namespace gpuconv_emu

unsigned __activemask() {
    const gpuconv_emu::Worker* w = gpuconv_emu::current_worker();
    return gpuconv_emu::live_lanes(w, w->cur->linear & ~31u);
}

extern "C" void gpuconv_emu_fiber_main() {
    using namespace gpuconv_emu;
    Worker* w = current_worker();
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(nullptr, &w->sched_stack_bottom, &w->sched_stack_size);
#endif
    w->info->invoke(w->info->fn, w->args);
    w = current_worker();
    Fiber* f = w->cur;
    check_exit(w, f);
    f->state = State::Done;
    to_scheduler(w, f, true);
    __builtin_unreachable();
}

// =============================================================================================================
// C API (the only exported symbols)
// =============================================================================================================
#define GPUCONV_EMU_API extern "C" __attribute__((visibility("default")))

GPUCONV_EMU_API int gpuconv_emu_kernel_count() { return gpuconv_emu_kernel_total; }
GPUCONV_EMU_API const char* gpuconv_emu_kernel_name(int k) { return gpuconv_emu_kernels[k].name; }
GPUCONV_EMU_API int gpuconv_emu_kernel_nargs(int k) { return gpuconv_emu_kernels[k].nargs; }
GPUCONV_EMU_API const int* gpuconv_emu_kernel_arg_sizes(int k) { return gpuconv_emu_kernels[k].sizes; }
GPUCONV_EMU_API const char* gpuconv_emu_kernel_arg_kinds(int k) { return gpuconv_emu_kernels[k].kinds; }
GPUCONV_EMU_API unsigned long long gpuconv_emu_dynamic_smem_capacity() { return GPUCONV_EMU_DYNAMIC_SMEM_CAPACITY; }

// ranges: n pairs (offset, size) of static __shared__ variables in the module's TLS segment.
GPUCONV_EMU_API void gpuconv_emu_configure(const unsigned long long* ranges, int n, unsigned long long dynamic_offset) {
    gpuconv_emu::g_static_smem.clear();
    for (int i = 0; i < n; ++i) gpuconv_emu::g_static_smem.emplace_back(ranges[2 * i], ranges[2 * i + 1]);
    gpuconv_emu::g_dynamic_smem_offset = dynamic_offset;
}

// Runs kernel k on grid x block threads. Returns 0, or 1 with a message in err.
// order: 0 forward, 1 reverse, 2 shuffle (seeded); workers: OS threads that share the blocks.
GPUCONV_EMU_API int gpuconv_emu_launch(int k, const unsigned* grid, const unsigned* block,
                                       unsigned long long dynamic_bytes, void** args, int order,
                                       unsigned long long seed, unsigned long long stack_bytes, int workers,
                                       char* err, unsigned long long err_cap) {
    using namespace gpuconv_emu;
    LaunchShared L;
    L.info = &gpuconv_emu_kernels[k];
    L.args = args;
    L.grid = dim3(grid[0], grid[1], grid[2]);
    L.block = dim3(block[0], block[1], block[2]);
    L.dynamic_bytes = dynamic_bytes;
    L.mode = order;
    L.seed = seed;
    L.stack_bytes = (stack_bytes + 4095) & ~4095ULL;
    L.error_out = err;
    L.error_cap = err_cap;
    const unsigned long long blocks = static_cast<unsigned long long>(grid[0]) * grid[1] * grid[2];
    const unsigned long long helpers = workers > 1 ? std::min<unsigned long long>(workers, blocks) - 1 : 0;
    std::vector<std::thread> threads;
    for (unsigned long long i = 0; i < helpers; ++i) threads.emplace_back(run_blocks, &L);
    run_blocks(&L);
    for (auto& t : threads) t.join();
    std::fflush(stdout);
    return L.failed.load() ? 1 : 0;
}
