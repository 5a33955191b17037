// Metal's execution model on the CPU, as kernels see it: a threadgroup's threads are C++20
// coroutines run by one scheduler (runtime.cpp, compiled once), suspended at
// threadgroup_barrier and at SIMD-group functions until every thread (or lane) they wait for
// arrives. Misuse that Metal leaves undefined is an error here.
#pragma once

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <source_location>

namespace mtlemu {

constexpr uint32_t kSimdWidth = 32;
constexpr int kMemThreadgroup = 2;  // metal::mem_flags::mem_threadgroup

// Filled in by launch(), read by Python: what the grid did.
struct Stats {
  uint64_t threadgroups, threads, barriers, simd_ops, threadgroup_bytes;
};

struct Site {  // where in the kernel source a thread waits
  uint32_t line = 0, column = 0;
  bool operator==(const Site&) const = default;
  static Site of(const std::source_location& loc) { return {loc.line(), loc.column()}; }
};

// One lane's pending SIMD-group function; the last lane to arrive resolves all of them.
struct SimdWaiter {
  const char* op;
  Site site;
  virtual void resolve(SimdWaiter* const* lanes, uint32_t n_lanes) = 0;

 protected:
  ~SimdWaiter() = default;
};

struct KernelTask {
  struct promise_type {
    std::exception_ptr error;
    KernelTask get_return_object() {
      return {std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    std::suspend_always final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { error = std::current_exception(); }
  };
  std::coroutine_handle<promise_type> handle;
};

// Per threadgroup-memory element: which thread wrote and read it in which barrier epoch.
struct Shadow {
  uint32_t write_epoch = 0, read_epoch = 0;
  int16_t writer = -1, reader = -1;
};
constexpr int16_t kManyReaders = -2;

// The values of Metal's thread attributes for one thread.
struct ThreadAttributes {
  uint32_t thread_position_in_grid[3], threadgroup_position_in_grid[3];
  uint32_t thread_position_in_threadgroup[3], threads_per_threadgroup[3];
  uint32_t threadgroups_per_grid[3], threads_per_grid[3], dispatch_threads_per_threadgroup[3];
  uint32_t thread_index_in_threadgroup, thread_index_in_simdgroup, simdgroup_index_in_threadgroup;
  uint32_t simdgroups_per_threadgroup, dispatch_simdgroups_per_threadgroup;
  uint32_t thread_index_in_quadgroup, quadgroup_index_in_threadgroup;
  uint32_t quadgroups_per_threadgroup, dispatch_quadgroups_per_threadgroup;
};

// The thread the scheduler resumed last (the emulator runs one thread at a time).
struct Running {
  uint32_t thread;         // index in its threadgroup
  uint32_t epoch;          // threadgroup barriers with mem_threadgroup passed so far, plus 1
  int64_t global_thread;   // index in the grid
};
extern Running running;

[[noreturn]] void fail(const char* message);
[[noreturn]] void index_error(const char* what, const char* name, long long index, uint64_t size);
[[noreturn]] void race_error(const char* name, uint64_t index, const char* what, int16_t other);
[[noreturn]] void double_write_error(const char* name, uint64_t index, int64_t first);

void arrive_barrier(int flags, Site site);
void arrive_simd(SimdWaiter* waiter);
// The threadgroup array `name` of `count` elements, allocated (and filled by `poison`) by
// the first thread that declares it; later threads get the same memory.
void* declare_threadgroup(const char* name, size_t element_size, size_t count,
                          void (*poison)(void*, size_t), Shadow** shadow);

// Who wrote each element of an output buffer (-1: nobody yet), for the checked build.
struct Writers {
  int64_t* data;
  explicit Writers(uint64_t size);
  ~Writers();
  Writers(const Writers&) = delete;
  Writers& operator=(const Writers&) = delete;
};

using MakeThread = KernelTask (*)(const ThreadAttributes&, void* context);
// Runs every threadgroup of the grid; returns 0, or 1 with the message in `error`.
int launch(const uint32_t grid[3], const uint32_t threadgroup[3], Stats* stats, char* error,
           size_t error_size, MakeThread make, void* context);

}  // namespace mtlemu
