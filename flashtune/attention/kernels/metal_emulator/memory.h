// Checked views of Metal memory: device buffers with bounds checks and one writer per
// element, threadgroup arrays with bounds checks and a race detector (accesses by two
// threads to one element with no threadgroup_barrier(mem_threadgroup) between them).
#pragma once

#include <type_traits>

#include "runtime.h"

namespace mtlemu {

template <class I>
uint64_t checked_index(I i, uint64_t size, const char* what, const char* name) {
  static_assert(std::is_integral_v<I>, "an index must be an integer");
  if constexpr (std::is_signed_v<I>) {
    if (i < 0) index_error(what, name, static_cast<long long>(i), size);
  }
  if (static_cast<uint64_t>(i) >= size) index_error(what, name, static_cast<long long>(i), size);
  return static_cast<uint64_t>(i);
}

template <class T>
class ThreadgroupRef {
 public:
  ThreadgroupRef(T* p, Shadow* shadow, const char* name, uint64_t index)
      : p_(p), shadow_(shadow), name_(name), index_(index) {}
  operator T() const {
    read();
    return *p_;
  }
  ThreadgroupRef& operator=(const T& value) {
    write();
    *p_ = value;
    return *this;
  }
  ThreadgroupRef& operator=(const ThreadgroupRef& other) { return *this = static_cast<T>(other); }
  template <class U>
  ThreadgroupRef& operator+=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) + v); }
  template <class U>
  ThreadgroupRef& operator-=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) - v); }
  template <class U>
  ThreadgroupRef& operator*=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) * v); }
  template <class U>
  ThreadgroupRef& operator/=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) / v); }

 private:
  void read() const {
    const auto me = static_cast<int16_t>(running.thread);
    Shadow& s = *shadow_;
    if (s.write_epoch == running.epoch && s.writer != me)
      race_error(name_, index_, "read after a write by", s.writer);
    if (s.read_epoch != running.epoch) {
      s.read_epoch = running.epoch;
      s.reader = me;
    } else if (s.reader != me) {
      s.reader = kManyReaders;
    }
  }
  void write() const {
    const auto me = static_cast<int16_t>(running.thread);
    Shadow& s = *shadow_;
    if (s.write_epoch == running.epoch && s.writer != me)
      race_error(name_, index_, "written after a write by", s.writer);
    if (s.read_epoch == running.epoch && s.reader != me)
      race_error(name_, index_, "written after a read by", s.reader);
    s.write_epoch = running.epoch;
    s.writer = me;
  }
  T* p_;
  Shadow* shadow_;
  const char* name_;
  uint64_t index_;
};

template <class T>
void poison(void* data, size_t count) {
  T value;
  if constexpr (std::is_integral_v<T>) {
    value = static_cast<T>(0x5a5a5a5a5a5a5a5aull);  // garbage: neither 0 nor -1
  } else {
    value = T(__builtin_nanf(""));  // float, half, bfloat
  }
  for (size_t i = 0; i < count; ++i) static_cast<T*>(data)[i] = value;
}

// `threadgroup T name[N];` at kernel scope becomes `auto name = threadgroup_array<T, N>("name");`
template <class T, size_t N>
struct ThreadgroupArray {
  T* data;
  Shadow* shadow;
  const char* name;
#ifdef MTLEMU_CHECKED
  template <class I>
  ThreadgroupRef<T> operator[](I i) const {
    const uint64_t k = checked_index(i, N, "threadgroup array", name);
    return ThreadgroupRef<T>(data + k, shadow + k, name, k);
  }
#else
  template <class I>
  T& operator[](I i) const { return data[i]; }
#endif
};

template <class T, size_t N>
ThreadgroupArray<T, N> threadgroup_array(const char* name) {
  Shadow* shadow = nullptr;
  void* data = declare_threadgroup(name, sizeof(T), N, poison<T>, &shadow);
  return {static_cast<T*>(data), shadow, name};
}

// `const device T* name` (or constant) in the checked build.
template <class T>
struct DeviceIn {
  const T* data;
  uint64_t size;
  const char* name;
  template <class I>
  const T& operator[](I i) const { return data[checked_index(i, size, "buffer", name)]; }
  const T& operator*() const { return (*this)[0]; }
};

template <class T>
class DeviceRef {
 public:
  DeviceRef(T* p, int64_t* writer, const char* name, uint64_t index)
      : p_(p), writer_(writer), name_(name), index_(index) {}
  operator T() const { return *p_; }
  DeviceRef& operator=(const T& value) {
    if (*writer_ >= 0 && *writer_ != running.global_thread)
      double_write_error(name_, index_, *writer_);
    *writer_ = running.global_thread;
    *p_ = value;
    return *this;
  }
  DeviceRef& operator=(const DeviceRef& other) { return *this = static_cast<T>(other); }

 private:
  T* p_;
  int64_t* writer_;
  const char* name_;
  uint64_t index_;
};

// `device T* name` (an output) in the checked build.
template <class T>
struct DeviceOut {
  T* data;
  uint64_t size;
  const char* name;
  int64_t* writers;
  template <class I>
  DeviceRef<T> operator[](I i) const {
    const uint64_t k = checked_index(i, size, "buffer", name);
    return DeviceRef<T>(data + k, writers + k, name, k);
  }
};

}  // namespace mtlemu
