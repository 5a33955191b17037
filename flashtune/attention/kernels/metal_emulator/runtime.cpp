// The emulator's scheduler: runs a grid threadgroup by threadgroup, each threadgroup's threads
// as coroutines resumed in turn, and names the Metal rule a kernel breaks.
#include "runtime.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace mtlemu {

namespace {

constexpr uint32_t kMaxThreadsPerThreadgroup = 1024;
constexpr size_t kThreadgroupMemoryBytes = 32768;  // maxThreadgroupMemoryLength of Apple GPUs
constexpr size_t kThreadgroupAlignment = 16;

struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string str(Site s) { return "line " + std::to_string(s.line) + ":" + std::to_string(s.column); }

std::string thread_list(const std::vector<uint32_t>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    out += (out.empty() ? "" : ", ") + std::to_string(ids[i]);
    if (j > i) out += "-" + std::to_string(ids[j]);
    i = j + 1;
  }
  return out;
}

enum class Wait : uint8_t { running, barrier, simd, done };

struct ThreadSlot {
  std::coroutine_handle<KernelTask::promise_type> handle;
  Wait wait = Wait::running;
  Site site;
  int flags = 0;
  uint32_t declarations_seen = 0;
};

struct Declaration {
  std::string name;
  size_t bytes;
  void* data;
  std::unique_ptr<Shadow[]> shadow;
};

class Group {
 public:
  Group(const uint32_t position[3], uint32_t size, int64_t first_thread, Stats& stats)
      : first_thread_(first_thread), size_(size), stats_(stats), threads_(size),
        simd_arrived_((size + kSimdWidth - 1) / kSimdWidth),
        simd_waiters_((size + kSimdWidth - 1) / kSimdWidth) {
    std::copy(position, position + 3, position_);
    queue_.reserve(2 * size);
    memory_ = std::make_unique<unsigned char[]>(kThreadgroupMemoryBytes + kThreadgroupAlignment);
  }
  ~Group() {
    for (auto& slot : threads_)
      if (slot.handle) slot.handle.destroy();
  }

  template <class Make>
  void run(Make&& make);
  void arrive_barrier(int flags, Site site);
  void arrive_simd(SimdWaiter* waiter);
  void* declare(const char* name, size_t element_size, size_t count, void (*poison)(void*, size_t),
                Shadow** shadow);
  uint32_t size() const { return size_; }

 private:
  uint32_t lanes_in(uint32_t simdgroup) const {
    return std::min(kSimdWidth, size_ - simdgroup * kSimdWidth);
  }
  void wake(uint32_t t) {
    threads_[t].wait = Wait::running;
    queue_.push_back(t);
  }
  std::string name() const {
    return "threadgroup (" + std::to_string(position_[0]) + ", " + std::to_string(position_[1]) +
           ", " + std::to_string(position_[2]) + ")";
  }
  std::string where(uint32_t t) const {
    return name() + ", thread " + std::to_string(t) + " (simdgroup " +
           std::to_string(t / kSimdWidth) + ", lane " + std::to_string(t % kSimdWidth) + ")";
  }
  void release_barrier();
  void stalled_simd(uint32_t simdgroup) const;
  [[noreturn]] void stalled() const;

  uint32_t position_[3];
  int64_t first_thread_;
  uint32_t size_;
  Stats& stats_;
  std::vector<ThreadSlot> threads_;
  std::vector<uint32_t> queue_;
  uint32_t barrier_arrived_ = 0, epoch_ = 1;
  std::vector<uint32_t> simd_arrived_;
  std::vector<std::array<SimdWaiter*, kSimdWidth>> simd_waiters_;
  std::vector<Declaration> declarations_;
  std::unique_ptr<unsigned char[]> memory_;
  size_t memory_used_ = 0;
};

Group* current = nullptr;

template <class Make>
void Group::run(Make&& make) {
  for (uint32_t t = 0; t < size_; ++t) {
    threads_[t].handle = make(t).handle;
    queue_.push_back(t);
  }
  uint32_t done = 0;
  while (true) {
    for (size_t head = 0; head < queue_.size(); ++head) {
      const uint32_t t = queue_[head];
      running = {t, epoch_, first_thread_ + t};
      auto handle = threads_[t].handle;
      handle.resume();
      if (!handle.done()) continue;
      threads_[t].wait = Wait::done;
      ++done;
      if (auto error = handle.promise().error) {
        try {
          std::rethrow_exception(error);
        } catch (const std::exception& e) {
          throw KernelError(where(t) + ": " + e.what());
        }
      }
    }
    queue_.clear();
    if (done == size_) break;
    stalled();
  }
  stats_.threadgroup_bytes = std::max<uint64_t>(stats_.threadgroup_bytes, memory_used_);
}

void Group::arrive_barrier(int flags, Site site) {
  ThreadSlot& slot = threads_[running.thread];
  slot.wait = Wait::barrier;
  slot.site = site;
  slot.flags = flags;
  if (++barrier_arrived_ == size_) release_barrier();
}

void Group::release_barrier() {
  const ThreadSlot& first = threads_[0];
  for (uint32_t t = 1; t < size_; ++t) {
    if (threads_[t].site == first.site && threads_[t].flags == first.flags) continue;
    throw KernelError("threads of one threadgroup wait at different barriers: thread 0 at " +
                      str(first.site) + " (mem_flags " + std::to_string(first.flags) +
                      "), thread " + std::to_string(t) + " at " + str(threads_[t].site) +
                      " (mem_flags " + std::to_string(threads_[t].flags) + ")");
  }
  // Without mem_threadgroup a barrier orders execution only, not threadgroup memory.
  if (first.flags & kMemThreadgroup) ++epoch_;
  ++stats_.barriers;
  barrier_arrived_ = 0;
  for (uint32_t t = 0; t < size_; ++t) wake(t);
}

void Group::arrive_simd(SimdWaiter* waiter) {
  ThreadSlot& slot = threads_[running.thread];
  slot.wait = Wait::simd;
  slot.site = waiter->site;
  const uint32_t simdgroup = running.thread / kSimdWidth, lanes = lanes_in(simdgroup);
  auto& waiters = simd_waiters_[simdgroup];
  waiters[running.thread % kSimdWidth] = waiter;
  if (++simd_arrived_[simdgroup] < lanes) return;
  for (uint32_t lane = 1; lane < lanes; ++lane) {
    const char* op = waiters[lane]->op;
    if (waiters[lane]->site == waiters[0]->site &&
        (op == waiters[0]->op || !std::strcmp(op, waiters[0]->op)))
      continue;
    throw KernelError("lanes of simdgroup " + std::to_string(simdgroup) +
                      " call different SIMD-group functions: lane 0 " + waiters[0]->op + " at " +
                      str(waiters[0]->site) + ", lane " + std::to_string(lane) + " " +
                      waiters[lane]->op + " at " + str(waiters[lane]->site));
  }
  waiter->resolve(waiters.data(), lanes);
  ++stats_.simd_ops;
  simd_arrived_[simdgroup] = 0;
  for (uint32_t lane = 0; lane < lanes; ++lane) wake(simdgroup * kSimdWidth + lane);
}

void Group::stalled_simd(uint32_t s) const {
  std::vector<uint32_t> arrived, exited, elsewhere;
  for (uint32_t lane = 0; lane < lanes_in(s); ++lane) {
    const Wait wait = threads_[s * kSimdWidth + lane].wait;
    (wait == Wait::simd ? arrived : wait == Wait::done ? exited : elsewhere).push_back(lane);
  }
  const SimdWaiter* waiter = simd_waiters_[s][arrived.front()];
  std::string why = name() + ": " + waiter->op + " at " + str(waiter->site) + " in simdgroup " +
                    std::to_string(s) + " is reached by lanes " + thread_list(arrived) +
                    " only";
  if (!exited.empty()) why += "; lanes " + thread_list(exited) + " have exited";
  if (!elsewhere.empty()) why += "; lanes " + thread_list(elsewhere) + " wait at a barrier";
  throw KernelError(why + " (every lane of a simdgroup must take part)");
}

void Group::stalled() const {
  for (uint32_t s = 0; s < simd_arrived_.size(); ++s)
    if (simd_arrived_[s]) stalled_simd(s);
  std::vector<uint32_t> waiting, exited;
  for (uint32_t t = 0; t < size_; ++t)
    (threads_[t].wait == Wait::done ? exited : waiting).push_back(t);
  throw KernelError(name() + ": threadgroup_barrier at " + str(threads_[waiting.front()].site) +
                    " is reached by threads " + thread_list(waiting) + " only; threads " +
                    thread_list(exited) +
                    " have exited (every thread of a threadgroup must reach it)");
}

void* Group::declare(const char* name, size_t element_size, size_t count,
                     void (*poison)(void*, size_t), Shadow** shadow) {
  const uint32_t index = threads_[running.thread].declarations_seen++;
  if (index < declarations_.size()) {
    if (declarations_[index].name != name)
      throw KernelError("threads declare threadgroup arrays in different orders: " +
                        declarations_[index].name + " and " + name);
    *shadow = declarations_[index].shadow.get();
    return declarations_[index].data;
  }
  // Metal lays threadgroup variables out itself; 16-byte granules are an estimate of it.
  const size_t bytes = (element_size * count + kThreadgroupAlignment - 1) /
                       kThreadgroupAlignment * kThreadgroupAlignment;
  if (memory_used_ + bytes > kThreadgroupMemoryBytes) {
    std::string listing;
    for (const auto& d : declarations_) listing += d.name + " " + std::to_string(d.bytes) + " + ";
    throw KernelError("threadgroup memory exceeds the " + std::to_string(kThreadgroupMemoryBytes) +
                      " bytes an Apple GPU threadgroup may use: " + listing + name + " " +
                      std::to_string(bytes) + " = " + std::to_string(memory_used_ + bytes) +
                      " bytes");
  }
  void* data = memory_.get() + memory_used_;
  poison(data, count);  // Metal does not clear threadgroup memory
  memory_used_ += bytes;
  declarations_.push_back({name, bytes, data, std::make_unique<Shadow[]>(count)});
  *shadow = declarations_.back().shadow.get();
  return data;
}

// MLX's dispatch: the grid counts threads, a threadgroup is clipped to the grid, and the
// last threadgroup of each dimension may be partial (non-uniform threadgroups).
struct Dispatch {
  uint32_t grid[3], group[3], groups[3];
};

ThreadAttributes attributes(const Dispatch& d, const uint32_t position[3], const uint32_t dims[3],
                            uint32_t t) {
  ThreadAttributes a{};
  const uint32_t local[3] = {t % dims[0], (t / dims[0]) % dims[1], t / (dims[0] * dims[1])};
  for (int i = 0; i < 3; ++i) {
    a.thread_position_in_grid[i] = position[i] * d.group[i] + local[i];
    a.threadgroup_position_in_grid[i] = position[i];
    a.thread_position_in_threadgroup[i] = local[i];
    a.threads_per_threadgroup[i] = dims[i];
    a.threadgroups_per_grid[i] = d.groups[i];
    a.threads_per_grid[i] = d.grid[i];
    a.dispatch_threads_per_threadgroup[i] = d.group[i];
  }
  const uint32_t size = dims[0] * dims[1] * dims[2];
  const uint32_t full = d.group[0] * d.group[1] * d.group[2];
  a.thread_index_in_threadgroup = t;
  a.thread_index_in_simdgroup = t % kSimdWidth;
  a.simdgroup_index_in_threadgroup = t / kSimdWidth;
  a.simdgroups_per_threadgroup = (size + kSimdWidth - 1) / kSimdWidth;
  a.dispatch_simdgroups_per_threadgroup = (full + kSimdWidth - 1) / kSimdWidth;
  a.thread_index_in_quadgroup = t % 4;
  a.quadgroup_index_in_threadgroup = t / 4;
  a.quadgroups_per_threadgroup = (size + 3) / 4;
  a.dispatch_quadgroups_per_threadgroup = (full + 3) / 4;
  return a;
}

Dispatch dispatch(const uint32_t grid[3], const uint32_t threadgroup[3]) {
  Dispatch d{};
  uint64_t requested = 1;
  for (int i = 0; i < 3; ++i) {
    if (threadgroup[i] == 0) throw KernelError("threadgroup size has a zero dimension");
    requested *= threadgroup[i];
    d.grid[i] = grid[i];
    d.group[i] = std::max(1u, std::min(threadgroup[i], grid[i]));
    d.groups[i] = (grid[i] + d.group[i] - 1) / d.group[i];
  }
  if (requested > kMaxThreadsPerThreadgroup)
    throw KernelError("a threadgroup of " + std::to_string(requested) + " threads exceeds " +
                      std::to_string(kMaxThreadsPerThreadgroup));
  return d;
}

}  // namespace

Running running{};

void fail(const char* message) { throw KernelError(message); }

void index_error(const char* what, const char* name, long long index, uint64_t size) {
  throw KernelError(std::string(what) + " " + name + "[" + std::to_string(index) + "] " +
                    (index < 0 ? std::string("has a negative index")
                               : "is out of bounds (" + std::to_string(size) + " elements)"));
}

void race_error(const char* name, uint64_t index, const char* what, int16_t other) {
  throw KernelError("data race on threadgroup " + std::string(name) + "[" +
                    std::to_string(index) + "]: " + what + " " +
                    (other == kManyReaders ? std::string("several threads")
                                           : "thread " + std::to_string(other)) +
                    " with no threadgroup_barrier(mem_flags::mem_threadgroup) between");
}

void double_write_error(const char* name, uint64_t index, int64_t first) {
  throw KernelError(std::string("buffer ") + name + "[" + std::to_string(index) +
                    "] is written by two threads (grid thread " + std::to_string(first) +
                    " wrote it first)");
}

Writers::Writers(uint64_t size) : data(new int64_t[size]) { std::fill(data, data + size, -1); }

Writers::~Writers() { delete[] data; }

void arrive_barrier(int flags, Site site) { current->arrive_barrier(flags, site); }

void arrive_simd(SimdWaiter* waiter) { current->arrive_simd(waiter); }

void* declare_threadgroup(const char* name, size_t element_size, size_t count,
                          void (*poison)(void*, size_t), Shadow** shadow) {
  return current->declare(name, element_size, count, poison, shadow);
}

int launch(const uint32_t grid[3], const uint32_t threadgroup[3], Stats* stats, char* error,
           size_t error_size, MakeThread make, void* context) {
  try {
    *stats = {};
    const Dispatch d = dispatch(grid, threadgroup);
    if (!grid[0] || !grid[1] || !grid[2]) return 0;
    const uint32_t full = d.group[0] * d.group[1] * d.group[2];
    int64_t linear = 0;
    for (uint32_t z = 0; z < d.groups[2]; ++z)
      for (uint32_t y = 0; y < d.groups[1]; ++y)
        for (uint32_t x = 0; x < d.groups[0]; ++x, ++linear) {
          const uint32_t position[3] = {x, y, z};
          uint32_t dims[3];
          for (int i = 0; i < 3; ++i)
            dims[i] = std::min(d.group[i], d.grid[i] - position[i] * d.group[i]);
          Group group(position, dims[0] * dims[1] * dims[2], linear * full, *stats);
          current = &group;
          group.run([&](uint32_t t) { return make(attributes(d, position, dims, t), context); });
          current = nullptr;
          ++stats->threadgroups;
          stats->threads += group.size();
        }
  } catch (const std::exception& e) {
    current = nullptr;
    std::snprintf(error, error_size, "%s", e.what());
    return 1;
  }
  return 0;
}

}  // namespace mtlemu
