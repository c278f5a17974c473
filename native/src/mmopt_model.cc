// The C API of mmopt_model.h over TVM's runtime (tvm-ffi C++ API + libtvm_runtime's Relax VM).
//
// Loading an artifact is what tvm.relax.VirtualMachine does in Python, written against the
// installed tvm-ffi 0.1.14 headers:
//   lib  = ffi::Module::LoadFromFile("NAME.so")          (libtvm_ffi; the embedded Relax
//                                                          executable is read by the loader that
//                                                          libtvm_runtime registers)
//   vm   = lib->GetFunction("vm_load_executable")()       -> a VirtualMachine module
//   vm->GetFunction("vm_initialization")(kDLCPU, 0, kPooled)
//   main = vm->GetFunction("main")
// The input/output names, dtypes and shapes come from NAME.json (parsed with tvm-ffi's JSON
// reader), in call order.
//
// Artifacts with symbolic dims (`mmopt compile --dim`) run as mmopt.runtime.CompiledModel runs
// them: the inputs' shapes are checked against the dims' ranges and bound together
// (mmopt.ir.dims.bind_sizes, with the same one-line messages); sizes that are exactly a bucket's
// call the bucket's function (`main_bucket0`, ...), any other sizes `main`; when a dim has a
// multiple, both take the block counts (size / multiple of each such dim, in the order of the
// description's "dims") as a leading shape argument before the inputs
// (mmopt.codegen.symbolic_dims.with_block_argument).
//
// No exception leaves this file: every entry point catches and turns errors into a status plus
// the thread-local last-error string.

#include "mmopt_model.h"

#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <elf.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace ffi = tvm::ffi;

#ifndef MMOPT_TVM_VERSION
#define MMOPT_TVM_VERSION "unknown"
#endif

namespace {

// ------------------------------------------------------------------------------------------------
// errors

thread_local std::string g_last_error;

struct Failure {
  mmopt_status status;
  std::string message;
};

[[noreturn]] void Fail(mmopt_status status, std::string message) {
  throw Failure{status, std::move(message)};
}

int Record(mmopt_status status, const std::string& message) {
  // one line: the C API promises a one-line description
  std::string line = message;
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  g_last_error = line;
  return status;
}

std::string FirstLine(const std::string& text) {
  size_t end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

// Runs `body`, mapping every exception to a status (the API never throws, never aborts).
template <typename Body>
int Guard(mmopt_status runtime_status, Body&& body) {
  try {
    body();
    return MMOPT_OK;
  } catch (const Failure& f) {
    return Record(f.status, f.message);
  } catch (const ffi::Error& e) {
    return Record(runtime_status, e.kind() + ": " + FirstLine(e.message()));
  } catch (const std::bad_alloc&) {
    return Record(MMOPT_ERROR_RUNTIME, "out of memory");
  } catch (const std::exception& e) {
    return Record(runtime_status, FirstLine(e.what()));
  } catch (...) {
    return Record(runtime_status, "unknown error");
  }
}

// ------------------------------------------------------------------------------------------------
// dtypes

struct DTypeEntry {
  mmopt_dtype dtype;
  const char* name;
  size_t size;
};

const DTypeEntry kDTypes[] = {
    {MMOPT_FLOAT32, "float32", 4}, {MMOPT_FLOAT16, "float16", 2}, {MMOPT_FLOAT64, "float64", 8},
    {MMOPT_BFLOAT16, "bfloat16", 2}, {MMOPT_INT8, "int8", 1},     {MMOPT_INT16, "int16", 2},
    {MMOPT_INT32, "int32", 4},     {MMOPT_INT64, "int64", 8},     {MMOPT_UINT8, "uint8", 1},
    {MMOPT_UINT16, "uint16", 2},   {MMOPT_UINT32, "uint32", 4},   {MMOPT_UINT64, "uint64", 8},
    {MMOPT_BOOL, "bool", 1},
};

const DTypeEntry* FindDType(mmopt_dtype dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return &e;
  }
  return nullptr;
}

const DTypeEntry* FindDType(const std::string& name) {
  for (const auto& e : kDTypes) {
    if (name == e.name) return &e;
  }
  return nullptr;
}

std::string ShapeText(const int64_t* shape, int64_t ndim) {
  std::ostringstream os;
  os << "[";
  for (int64_t i = 0; i < ndim; ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

// ------------------------------------------------------------------------------------------------
// files

// open + lseek rather than stat: stat is a GLIBC_2.33 symbol, and the bundle should load on older
// systems (Debian 11, Ubuntu 20.04, JetPack 5) too.
bool FileSize(const std::string& path, uint64_t* size) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  off_t end = lseek(fd, 0, SEEK_END);
  char byte;
  bool regular = end >= 0 && (end == 0 || pread(fd, &byte, 1, 0) == 1);  // a directory: EISDIR
  close(fd);
  if (!regular) return false;
  *size = static_cast<uint64_t>(end);
  return true;
}

#if defined(__x86_64__)
constexpr uint16_t kThisMachine = EM_X86_64;
constexpr const char* kThisArch = "x86_64";
#elif defined(__aarch64__)
constexpr uint16_t kThisMachine = EM_AARCH64;
constexpr const char* kThisArch = "aarch64";
#else
#error "mmopt_model supports x86_64 and aarch64"
#endif

const char* MachineName(uint16_t machine) {
  switch (machine) {
    case EM_X86_64: return "x86_64";
    case EM_AARCH64: return "aarch64";
    case EM_386: return "x86 (32-bit)";
    case EM_ARM: return "arm (32-bit)";
    case EM_RISCV: return "riscv";
    default: return "another architecture";
  }
}

bool ReadAt(int fd, uint64_t offset, void* buf, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t got = pread(fd, static_cast<char*>(buf) + done, n - done,
                        static_cast<off_t>(offset + done));
    if (got <= 0) return false;
    done += static_cast<size_t>(got);
  }
  return true;
}

// A loader maps whatever the program headers say; a truncated file would fault on first touch
// (SIGBUS) instead of failing. Check that the library is a complete shared object for this
// machine before handing it to dlopen.
void CheckElf(const std::string& path) {
  uint64_t size = 0;
  if (!FileSize(path, &size)) Fail(MMOPT_ERROR_NOT_FOUND, path + ": no such file");
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) Fail(MMOPT_ERROR_LOAD, path + ": cannot be opened (" + std::strerror(errno) + ")");
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  Elf64_Ehdr eh;
  if (size < sizeof(eh) || !ReadAt(fd, 0, &eh, sizeof(eh)) ||
      std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) {
    Fail(MMOPT_ERROR_LOAD, path + ": not a shared library (no ELF header)");
  }
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB) {
    Fail(MMOPT_ERROR_LOAD, path + ": not a 64-bit little-endian library");
  }
  if (eh.e_machine != kThisMachine) {
    Fail(MMOPT_ERROR_LOAD, path + ": built for " + MachineName(eh.e_machine) +
                               ", this runtime is " + kThisArch);
  }
  if (eh.e_type != ET_DYN) Fail(MMOPT_ERROR_LOAD, path + ": not a shared library");
  auto truncated = [&](const char* what) {
    Fail(MMOPT_ERROR_LOAD, path + ": truncated or corrupt library (" + what + " past the end of the " +
                               std::to_string(size) + "-byte file)");
  };
  if (eh.e_phentsize != sizeof(Elf64_Phdr) ||
      eh.e_phoff + static_cast<uint64_t>(eh.e_phnum) * sizeof(Elf64_Phdr) > size) {
    truncated("program headers");
  }
  if (eh.e_shnum != 0 &&
      eh.e_shoff + static_cast<uint64_t>(eh.e_shnum) * eh.e_shentsize > size) {
    truncated("section headers");
  }
  for (int i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    if (!ReadAt(fd, eh.e_phoff + static_cast<uint64_t>(i) * sizeof(ph), &ph, sizeof(ph))) {
      truncated("a program header");
    }
    if ((ph.p_type == PT_LOAD || ph.p_type == PT_DYNAMIC) && ph.p_offset + ph.p_filesz > size) {
      truncated("a loadable segment");
    }
  }
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(MMOPT_ERROR_LOAD, path + ": cannot be read");
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// ------------------------------------------------------------------------------------------------
// the description (NAME.json)

// A symbolic dim (`--dim NAME=MIN..MAX[:MULTIPLE]`, the description's "dims").
struct Dim {
  std::string name;
  int64_t min = 0;
  int64_t max = 0;
  int64_t multiple = 1;
};

struct Spec {
  std::string name;
  std::string dtype_name;
  mmopt_dtype dtype = MMOPT_DTYPE_UNKNOWN;
  DLDataType dl{};
  size_t item_size = 0;
  std::vector<int64_t> shape;  // -1 on symbolic axes
  std::vector<int32_t> axes;   // per axis: the index of its symbolic dim, -1 when fixed (or unnamed)
  std::vector<std::string> dim_text;  // per axis: the size or the dim's name, as the JSON has it
  bool fixed = true;                  // every axis has a size
  size_t nbytes = 0;                  // 0 unless fixed
};

// A statically specialized copy of main (`--buckets`, the description's "buckets").
struct Bucket {
  std::string function;
  std::vector<int64_t> sizes;  // per dim; -1 for a dim the bucket does not bind
  ffi::Function call;
};

ffi::Any Field(const ffi::json::Object& obj, const char* key, const std::string& where) {
  ffi::String k(key);
  if (!obj.count(k)) Fail(MMOPT_ERROR_LOAD, where + ": no \"" + key + "\" field");
  return obj.at(k);
}

int FindDim(const std::vector<Dim>& dims, const std::string& name) {
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

// "dims": {name: {"min", "max", "multiple"}}, in the order of the file (tvm-ffi's Map iterates in
// insertion order, and the parser inserts keys as it reads them): the order of the block counts.
std::vector<Dim> ReadDims(const ffi::json::Object& meta, const std::string& where) {
  std::vector<Dim> dims;
  ffi::String key("dims");
  if (!meta.count(key)) return dims;
  for (const auto& kv : meta.at(key).cast<ffi::json::Object>()) {
    ffi::json::Object range = kv.second.cast<ffi::json::Object>();
    Dim d;
    d.name = std::string(kv.first.cast<ffi::String>());
    d.min = Field(range, "min", where).cast<int64_t>();
    d.max = Field(range, "max", where).cast<int64_t>();
    if (range.count(ffi::String("multiple"))) d.multiple = range.at(ffi::String("multiple")).cast<int64_t>();
    if (d.multiple < 1 || d.min < 0 || d.max < d.min) {
      Fail(MMOPT_ERROR_LOAD, where + ": dim " + d.name + " has an invalid range " +
                                 std::to_string(d.min) + ".." + std::to_string(d.max) + ":" +
                                 std::to_string(d.multiple));
    }
    dims.push_back(std::move(d));
  }
  return dims;
}

// Inputs and outputs. An axis is a size or the name of a symbolic dim; an input's names must be
// dims of the description, an output's may also be -1 or a name without a range (a size that
// depends on the inputs in a way the description does not name).
std::vector<Spec> ReadSpecs(const ffi::json::Object& meta, const char* key,
                            const std::vector<Dim>& dims, const std::string& where) {
  bool input = std::strcmp(key, "inputs") == 0;
  std::vector<Spec> specs;
  ffi::json::Array list = Field(meta, key, where).cast<ffi::json::Array>();
  for (const ffi::Any& item : list) {
    ffi::json::Object t = item.cast<ffi::json::Object>();
    Spec s;
    s.name = std::string(Field(t, "name", where).cast<ffi::String>());
    s.dtype_name = std::string(Field(t, "dtype", where).cast<ffi::String>());
    const DTypeEntry* d = FindDType(s.dtype_name);
    if (d == nullptr) {
      Fail(MMOPT_ERROR_LOAD, where + ": " + key + " " + s.name + " has dtype " + s.dtype_name +
                                 ", which this runtime does not support");
    }
    s.dtype = d->dtype;
    s.dl = ffi::StringToDLDataType(ffi::String(s.dtype_name));
    s.item_size = d->size;
    size_t n = 1;
    for (const ffi::Any& dim : Field(t, "shape", where).cast<ffi::json::Array>()) {
      if (auto name = dim.as<ffi::String>()) {
        int index = FindDim(dims, std::string(*name));
        if (index < 0 && input) {
          Fail(MMOPT_ERROR_LOAD, where + ": input " + s.name + " has the symbolic dim " +
                                     std::string(*name) + ", which \"dims\" does not list");
        }
        s.shape.push_back(-1);
        s.axes.push_back(index);
        s.dim_text.push_back(std::string(*name));
        s.fixed = false;
        continue;
      }
      int64_t v = dim.cast<int64_t>();
      if (v < 0 && (input || v != -1)) {
        Fail(MMOPT_ERROR_LOAD, where + ": " + s.name + " has a negative dimension");
      }
      s.shape.push_back(v);
      s.axes.push_back(-1);
      s.dim_text.push_back(v < 0 ? "?" : std::to_string(v));
      if (v < 0) s.fixed = false;
      else n *= static_cast<size_t>(v);
    }
    s.nbytes = s.fixed ? n * d->size : 0;
    specs.push_back(std::move(s));
  }
  return specs;
}

// "buckets": [{"function", "sizes": {dim: size}}].
std::vector<Bucket> ReadBuckets(const ffi::json::Object& meta, const std::vector<Dim>& dims,
                                const std::string& where) {
  std::vector<Bucket> buckets;
  ffi::String key("buckets");
  if (!meta.count(key)) return buckets;
  for (const ffi::Any& item : meta.at(key).cast<ffi::json::Array>()) {
    ffi::json::Object b = item.cast<ffi::json::Object>();
    Bucket bucket;
    bucket.function = std::string(Field(b, "function", where).cast<ffi::String>());
    bucket.sizes.assign(dims.size(), -1);
    for (const auto& kv : Field(b, "sizes", where).cast<ffi::json::Object>()) {
      std::string name(kv.first.cast<ffi::String>());
      int index = FindDim(dims, name);
      if (index < 0) {
        Fail(MMOPT_ERROR_LOAD, where + ": bucket " + bucket.function + " binds " + name +
                                   ", which \"dims\" does not list");
      }
      bucket.sizes[index] = kv.second.cast<int64_t>();
    }
    buckets.push_back(std::move(bucket));
  }
  return buckets;
}

void Describe(const Spec& s, mmopt_tensor_info* info) {
  info->name = s.name.c_str();
  info->dtype = s.dtype;
  info->dtype_name = s.dtype_name.c_str();
  info->ndim = static_cast<int32_t>(s.shape.size());
  info->shape = s.shape.empty() ? nullptr : s.shape.data();
  info->nbytes = s.nbytes;
}

// `[batch,3,h,w]`: a spec's dims as mmopt.ir.dims.format_dims writes them.
std::string DimsText(const Spec& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.dim_text.size(); ++i) out += (i ? "," : "") + s.dim_text[i];
  return out + "]";
}

// The checks of mmopt.ir.dims.bind_sizes for one input, with its messages: `shape` against the
// spec's rank, fixed sizes and its dims' ranges. Binds each dim's size into `sizes` (-1: not
// bound yet); a size differing from the one an earlier input (`bound_by`) bound is an error.
void BindInput(const std::vector<Dim>& dims, const Spec& spec, const int64_t* shape, int64_t ndim,
               std::vector<int64_t>* sizes, std::vector<const Spec*>* bound_by) {
  const std::string where = "input " + spec.name + ": ";
  if (static_cast<size_t>(ndim) != spec.shape.size()) {
    Fail(MMOPT_ERROR_MISMATCH, where + "rank " + std::to_string(ndim) + " given " +
                                   ShapeText(shape, ndim) + ", the artifact takes rank " +
                                   std::to_string(spec.shape.size()) + " " + DimsText(spec));
  }
  for (int64_t axis = 0; axis < ndim; ++axis) {
    int64_t got = shape[axis];
    std::string at = where + "dim " + std::to_string(axis);
    int index = spec.axes[axis];
    if (index < 0) {
      if (got != spec.shape[axis]) {
        Fail(MMOPT_ERROR_MISMATCH, at + " is " + std::to_string(got) + ", the artifact takes " +
                                       spec.dim_text[axis] + " there " + DimsText(spec));
      }
      continue;
    }
    const Dim& dim = dims[index];
    at += " (" + dim.name + ") is " + std::to_string(got) + ", ";
    std::string range = std::to_string(dim.min) + ".." + std::to_string(dim.max);
    if (got < dim.min || got > dim.max) {
      Fail(MMOPT_ERROR_MISMATCH, at + "outside the compiled range " + range);
    }
    if (got % dim.multiple != 0) {
      std::string m = std::to_string(dim.multiple);
      Fail(MMOPT_ERROR_MISMATCH, at + "not a multiple of " + m + " (range " + range +
                                     " in steps of " + m + ")");
    }
    if ((*sizes)[index] >= 0 && (*sizes)[index] != got) {
      Fail(MMOPT_ERROR_MISMATCH, at + "but input " + (*bound_by)[index]->name + " has " +
                                     dim.name + " = " + std::to_string((*sizes)[index]));
    }
    if ((*sizes)[index] < 0) {
      (*sizes)[index] = got;
      (*bound_by)[index] = &spec;
    }
  }
}

// Wraps caller memory as a tensor without copying: "allocation" points at it, "free" does nothing.
struct BorrowedMemory {
  void* data;
  void AllocData(DLTensor* tensor) { tensor->data = data; }
  void FreeData(DLTensor* tensor) { tensor->data = nullptr; }
};

// Memory the model owns (for unaligned inputs), 64-byte aligned.
struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<void, AlignedFree>;

constexpr size_t kAlignment = 64;

void FlattenTensors(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto t = value.as<ffi::Tensor>()) {
    out->push_back(*t);
    return;
  }
  if (auto list = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *list) FlattenTensors(item, out);
    return;
  }
  Fail(MMOPT_ERROR_RUNTIME, "the model returned " + std::string(value.GetTypeKey()) +
                                ", not tensors");
}

// What a dynamic artifact runs for one set of dim sizes: main or a bucket's function, and the
// block counts it takes first (when some dim has a multiple). The last few are kept, as the Python
// runtime keeps the last few input shapes, not every size ever seen.
struct Call {
  std::vector<int64_t> sizes;
  const char* function = "main";  // main or a bucket's function name (owned by the model)
  ffi::Function call;
  ffi::Optional<ffi::Shape> blocks;
};

constexpr size_t kRecentCalls = 8;

std::mutex g_open_mutex;  // module loading touches TVM's global registries

// Physical cores this process may run on (0: unknown): distinct (package, core) pairs of the CPUs
// in its affinity mask, from Linux's sysfs topology.
int PhysicalCores() {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return 0;
  std::set<std::pair<int, int>> cores;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    auto topology = [cpu](const char* what) {
      std::ifstream in("/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/" + what);
      int value = -1;
      in >> value;
      return value;
    };
    int core = topology("core_id");
    cores.insert(core < 0 ? std::make_pair(-1, cpu)
                          : std::make_pair(topology("physical_package_id"), core));
  }
  return static_cast<int>(cores.size());
}

// TVM pins worker threads to cores unless told not to; mmopt's Python loader unpins them (a pinned
// worker on a busy core stalls every parallel kernel). And TVM's default thread count is half the
// logical CPUs on x86 (it assumes two hardware threads per core): half the cores of a machine
// without SMT. Same defaults here as in Python (mmopt.runtime.threads): unpinned, one thread per
// physical core unless TVM_NUM_THREADS or OMP_NUM_THREADS says otherwise. Set once when the
// library is loaded (setenv is not safe while other threads read the environment).
__attribute__((constructor)) void DefaultThreads() {
  setenv("TVM_BIND_THREADS", "0", 0);
  if (getenv("TVM_NUM_THREADS") == nullptr && getenv("OMP_NUM_THREADS") == nullptr) {
    int cores = PhysicalCores();
    if (cores > 0) setenv("TVM_NUM_THREADS", std::to_string(cores).c_str(), 0);
  }
}

}  // namespace

// --------------------------------------------------------------------------------------------------
// the model

struct mmopt_model {
  std::string so_path;
  std::vector<Spec> inputs;
  std::vector<Spec> outputs;
  std::vector<Dim> dims;         // empty: static shapes
  std::vector<int> block_dims;   // dims with a multiple > 1, passed as block counts
  std::vector<Bucket> buckets;
  ffi::Optional<ffi::Module> lib;
  ffi::Optional<ffi::Module> vm;
  ffi::Function main;
  std::vector<ffi::Optional<ffi::Tensor>> input_tensors;
  std::vector<AlignedBuffer> input_copies;
  std::vector<size_t> copy_bytes;  // capacity of each input_copies buffer
  std::vector<Call> recent;        // the calls of the last kRecentCalls size sets (a ring)
  size_t next_recent = 0;          // the entry of `recent` replaced next when it is full
  std::vector<ffi::Tensor> results;
  const char* last_function = "main";  // what the last successful run called
  bool has_results = false;
  std::mutex mutex;
};

namespace {

void OpenModel(const char* path, mmopt_model* m) {
  std::string p(path);
  auto ends_with = [&](const char* suffix) {
    size_t n = std::strlen(suffix);
    return p.size() >= n && p.compare(p.size() - n, n, suffix) == 0;
  };
  if (ends_with(".so")) p.resize(p.size() - 3);
  else if (ends_with(".json")) p.resize(p.size() - 5);
  std::string so = p + ".so";
  std::string json = p + ".json";
  uint64_t size = 0;
  if (!FileSize(json, &size)) {
    Fail(MMOPT_ERROR_NOT_FOUND, json + ": no such file (an mmopt artifact is NAME.so + NAME.json)");
  }
  if (!FileSize(so, &size)) {
    Fail(MMOPT_ERROR_NOT_FOUND, so + ": no such file (the artifact's library is missing)");
  }
  m->so_path = so;

  ffi::String parse_error;
  ffi::json::Value parsed = ffi::json::Parse(ffi::String(ReadText(json)), &parse_error);
  if (!parse_error.empty()) {
    Fail(MMOPT_ERROR_LOAD, json + ": not JSON (" + std::string(parse_error) + ")");
  }
  try {
    ffi::json::Object meta = parsed.cast<ffi::json::Object>();
    ffi::json::Object target = Field(meta, "target", json).cast<ffi::json::Object>();
    std::string device(Field(target, "device", json).cast<ffi::String>());
    if (device != "cpu") {
      Fail(MMOPT_ERROR_LOAD, json + ": a " + device +
                                 " artifact; this runtime runs CPU artifacts only");
    }
    m->dims = ReadDims(meta, json);
    m->inputs = ReadSpecs(meta, "inputs", m->dims, json);
    m->outputs = ReadSpecs(meta, "outputs", m->dims, json);
    m->buckets = ReadBuckets(meta, m->dims, json);
  } catch (const ffi::Error& e) {
    Fail(MMOPT_ERROR_LOAD, json + ": not an mmopt artifact description (" + FirstLine(e.message()) +
                               ")");
  }

  CheckElf(so);
  std::lock_guard<std::mutex> lock(g_open_mutex);
  try {
    m->lib = ffi::Module::LoadFromFile(ffi::String(so));
  } catch (const ffi::Error& e) {
    Fail(MMOPT_ERROR_LOAD, so + ": cannot load the library (" + FirstLine(e.message()) + ")");
  }
  ffi::Optional<ffi::Function> load_exec = (*m->lib)->GetFunction(ffi::String("vm_load_executable"));
  if (!load_exec.has_value()) {
    Fail(MMOPT_ERROR_LOAD, so + ": not a TVM Relax executable (no vm_load_executable)");
  }
  m->vm = (*load_exec)().cast<ffi::Module>();
  ffi::Optional<ffi::Function> init = (*m->vm)->GetFunction(ffi::String("vm_initialization"));
  ffi::Optional<ffi::Function> main = (*m->vm)->GetFunction(ffi::String("main"));
  if (!init.has_value() || !main.has_value()) {
    Fail(MMOPT_ERROR_LOAD, so + ": the Relax executable has no main function");
  }
  // One CPU device with TVM's pooled allocator (what tvm.relax.VirtualMachine(lib, tvm.cpu())
  // sets up: device type, device id, allocator type; memory::kPooled == 2).
  (*init)(static_cast<int>(kDLCPU), 0, 2);
  m->main = *main;
  for (Bucket& b : m->buckets) {
    ffi::Optional<ffi::Function> f = (*m->vm)->GetFunction(ffi::String(b.function));
    if (!f.has_value()) {
      Fail(MMOPT_ERROR_LOAD, so + ": the Relax executable has no function " + b.function +
                                 " (a bucket of the description)");
    }
    b.call = *f;
  }
  for (size_t d = 0; d < m->dims.size(); ++d) {
    if (m->dims[d].multiple > 1) m->block_dims.push_back(static_cast<int>(d));
  }
  m->input_tensors.resize(m->inputs.size());
  m->input_copies.resize(m->inputs.size());
  m->copy_bytes.assign(m->inputs.size(), 0);
  m->recent.reserve(kRecentCalls);
}

int FindByName(const std::vector<Spec>& specs, const char* name) {
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

std::string NameList(const std::vector<Spec>& specs) {
  std::string out;
  for (const Spec& s : specs) out += (out.empty() ? "" : ", ") + s.name;
  return out;
}

void RequireModel(const mmopt_model* model) {
  if (model == nullptr) Fail(MMOPT_ERROR_INVALID_ARGUMENT, "model is NULL");
}

// The sizes of a dynamic artifact's dims for the inputs set, checked and bound together in input
// order (mmopt.ir.dims.bind_sizes: the later of two inputs disagreeing on a dim is named).
std::vector<int64_t> BindAll(const mmopt_model* m) {
  std::vector<int64_t> sizes(m->dims.size(), -1);
  std::vector<const Spec*> bound_by(m->dims.size(), nullptr);
  for (size_t i = 0; i < m->inputs.size(); ++i) {
    ffi::ShapeView shape = m->input_tensors[i].value().shape();
    BindInput(m->dims, m->inputs[i], shape.data(), static_cast<int64_t>(shape.size()), &sizes,
              &bound_by);
  }
  return sizes;
}

// What to call for `sizes`: the bucket whose sizes they are exactly, else main; with the block
// counts (size / multiple) of the dims that have a multiple as the leading argument.
const Call& CallFor(mmopt_model* m, const std::vector<int64_t>& sizes) {
  for (const Call& c : m->recent) {
    if (c.sizes == sizes) return c;
  }
  Call call;
  call.sizes.assign(sizes.begin(), sizes.end());
  call.call = m->main;
  for (const Bucket& b : m->buckets) {
    if (b.sizes == sizes) {
      call.function = b.function.c_str();
      call.call = b.call;
      break;
    }
  }
  if (!m->block_dims.empty()) {
    std::vector<int64_t> blocks(m->block_dims.size());
    for (size_t k = 0; k < blocks.size(); ++k) {
      int d = m->block_dims[k];
      if (sizes[d] < 0) {
        Fail(MMOPT_ERROR_RUNTIME, "dim " + m->dims[d].name + " is bound by no input");
      }
      blocks[k] = sizes[d] / m->dims[d].multiple;
    }
    call.blocks = ffi::Shape(blocks.begin(), blocks.end());
  }
  // a ring of kRecentCalls entries, the oldest replaced (not a std::deque: with GCC 12 its map
  // growth pulls in std::__throw_bad_array_new_length, a GLIBCXX_3.4.29 symbol, beyond the
  // bundle's libstdc++ requirement of GLIBCXX_3.4.26)
  if (m->recent.size() < kRecentCalls) {
    m->recent.push_back(std::move(call));
    return m->recent.back();
  }
  Call& slot = m->recent[m->next_recent];
  m->next_recent = (m->next_recent + 1) % kRecentCalls;
  slot = std::move(call);
  return slot;
}

size_t BytesOf(const ffi::Tensor& t, const Spec& spec) {
  size_t n = spec.item_size;
  for (int64_t d : t.shape()) n *= static_cast<size_t>(d);
  return n;
}

}  // namespace

// --------------------------------------------------------------------------------------------------
// the API

extern "C" {

const char* mmopt_runtime_version(void) {
  return "mmopt-model API 1 (TVM " MMOPT_TVM_VERSION " runtime)";
}

const char* mmopt_last_error(void) { return g_last_error.c_str(); }

size_t mmopt_dtype_size(mmopt_dtype dtype) {
  const DTypeEntry* d = FindDType(dtype);
  return d ? d->size : 0;
}

int mmopt_set_num_threads(int n) {
  return Guard(MMOPT_ERROR_INVALID_ARGUMENT, [&] {
    if (n < 1) Fail(MMOPT_ERROR_INVALID_ARGUMENT, "the number of threads must be >= 1");
    std::string value = std::to_string(n);
    setenv("TVM_NUM_THREADS", value.c_str(), 1);
  });
}

int mmopt_model_open(const char* path, mmopt_model** out) {
  if (out != nullptr) *out = nullptr;
  std::unique_ptr<mmopt_model> model;
  int status = Guard(MMOPT_ERROR_LOAD, [&] {
    if (path == nullptr || out == nullptr) {
      Fail(MMOPT_ERROR_INVALID_ARGUMENT, "mmopt_model_open: path and out must not be NULL");
    }
    model.reset(new mmopt_model());
    OpenModel(path, model.get());
  });
  if (status == MMOPT_OK) *out = model.release();
  return status;
}

void mmopt_model_close(mmopt_model* model) {
  if (model == nullptr) return;
  try {
    delete model;
  } catch (...) {
    // destructors of runtime objects do not throw; nothing to report from a void function
  }
}

int mmopt_model_num_inputs(const mmopt_model* model) {
  if (model == nullptr) return Record(MMOPT_ERROR_INVALID_ARGUMENT, "model is NULL"), -1;
  return static_cast<int>(model->inputs.size());
}

int mmopt_model_num_outputs(const mmopt_model* model) {
  if (model == nullptr) return Record(MMOPT_ERROR_INVALID_ARGUMENT, "model is NULL"), -1;
  return static_cast<int>(model->outputs.size());
}

static int Info(const mmopt_model* model, int index, mmopt_tensor_info* info, bool input) {
  return Guard(MMOPT_ERROR_INVALID_ARGUMENT, [&] {
    RequireModel(model);
    if (info == nullptr) Fail(MMOPT_ERROR_INVALID_ARGUMENT, "info is NULL");
    const std::vector<Spec>& specs = input ? model->inputs : model->outputs;
    if (index < 0 || static_cast<size_t>(index) >= specs.size()) {
      Fail(MMOPT_ERROR_INVALID_ARGUMENT, std::string(input ? "input" : "output") + " index " +
                                             std::to_string(index) + " out of range (the model has " +
                                             std::to_string(specs.size()) + ")");
    }
    Describe(specs[index], info);
  });
}

int mmopt_model_input_info(const mmopt_model* model, int index, mmopt_tensor_info* info) {
  return Info(model, index, info, true);
}

int mmopt_model_output_info(const mmopt_model* model, int index, mmopt_tensor_info* info) {
  return Info(model, index, info, false);
}

static int Find(const mmopt_model* model, const char* name, int* index, bool input) {
  return Guard(MMOPT_ERROR_INVALID_ARGUMENT, [&] {
    RequireModel(model);
    if (name == nullptr || index == nullptr) {
      Fail(MMOPT_ERROR_INVALID_ARGUMENT, "name and index must not be NULL");
    }
    const std::vector<Spec>& specs = input ? model->inputs : model->outputs;
    int i = FindByName(specs, name);
    if (i < 0) {
      Fail(MMOPT_ERROR_NOT_FOUND, std::string("the model has no ") + (input ? "input" : "output") +
                                      " named " + name + " (it has " + NameList(specs) + ")");
    }
    *index = i;
  });
}

int mmopt_model_find_input(const mmopt_model* model, const char* name, int* index) {
  return Find(model, name, index, true);
}

int mmopt_model_find_output(const mmopt_model* model, const char* name, int* index) {
  return Find(model, name, index, false);
}

int mmopt_model_set_input(mmopt_model* model, const char* name, const void* data,
                          mmopt_dtype dtype, int32_t ndim, const int64_t* shape) {
  return Guard(MMOPT_ERROR_RUNTIME, [&] {
    RequireModel(model);
    if (name == nullptr) Fail(MMOPT_ERROR_INVALID_ARGUMENT, "input name is NULL");
    std::lock_guard<std::mutex> lock(model->mutex);
    int i = FindByName(model->inputs, name);
    if (i < 0) {
      Fail(MMOPT_ERROR_NOT_FOUND, std::string("the model has no input named ") + name +
                                      " (it has " + NameList(model->inputs) + ")");
    }
    const Spec& spec = model->inputs[i];
    const DTypeEntry* given = FindDType(dtype);
    if (given == nullptr) {
      Fail(MMOPT_ERROR_INVALID_ARGUMENT, "input " + spec.name + ": unknown dtype code " +
                                             std::to_string(static_cast<int>(dtype)));
    }
    if (given->dtype != spec.dtype) {
      Fail(MMOPT_ERROR_MISMATCH, "input " + spec.name + ": dtype " + given->name +
                                     " given, the model expects " + spec.dtype_name);
    }
    if (ndim < 0 || (ndim > 0 && shape == nullptr)) {
      Fail(MMOPT_ERROR_INVALID_ARGUMENT, "input " + spec.name + ": invalid rank or NULL shape");
    }
    if (model->dims.empty()) {
      bool same = static_cast<size_t>(ndim) == spec.shape.size();
      for (int32_t d = 0; same && d < ndim; ++d) same = shape[d] == spec.shape[d];
      if (!same) {
        Fail(MMOPT_ERROR_MISMATCH, "input " + spec.name + ": shape " + ShapeText(shape, ndim) +
                                       " given, the model was compiled for " +
                                       ShapeText(spec.shape.data(), spec.shape.size()));
      }
    } else {
      // this input's own checks now; whether the inputs agree with each other is checked by run,
      // once all of them are set (they may change size one at a time)
      std::vector<int64_t> sizes(model->dims.size(), -1);
      std::vector<const Spec*> bound_by(model->dims.size(), nullptr);
      BindInput(model->dims, spec, shape, ndim, &sizes, &bound_by);
    }
    size_t nbytes = spec.item_size;
    for (int32_t d = 0; d < ndim; ++d) nbytes *= static_cast<size_t>(shape[d]);
    if (data == nullptr && nbytes > 0) {
      Fail(MMOPT_ERROR_INVALID_ARGUMENT, "input " + spec.name + ": data is NULL");
    }
    void* memory = const_cast<void*>(data);
    if (reinterpret_cast<uintptr_t>(data) % kAlignment != 0) {
      // one buffer per input, grown to the largest size set so far (at most the largest size
      // the dims' ranges allow)
      if (!model->input_copies[i] || model->copy_bytes[i] < nbytes) {
        void* p = nullptr;
        size_t bytes = (nbytes + kAlignment - 1) / kAlignment * kAlignment;
        if (posix_memalign(&p, kAlignment, bytes ? bytes : kAlignment) != 0) throw std::bad_alloc();
        model->input_tensors[i] = ffi::Optional<ffi::Tensor>();  // may borrow the old buffer
        model->input_copies[i].reset(p);
        model->copy_bytes[i] = bytes;
      }
      std::memcpy(model->input_copies[i].get(), data, nbytes);
      memory = model->input_copies[i].get();
    }
    model->input_tensors[i] = ffi::Tensor::FromNDAlloc(
        BorrowedMemory{memory}, ffi::ShapeView(shape, static_cast<size_t>(ndim)), spec.dl,
        DLDevice{kDLCPU, 0});
  });
}

int mmopt_model_run(mmopt_model* model) {
  return Guard(MMOPT_ERROR_RUNTIME, [&] {
    RequireModel(model);
    std::lock_guard<std::mutex> lock(model->mutex);
    std::vector<ffi::AnyView> args;
    args.reserve(model->inputs.size() + 1);
    for (size_t i = 0; i < model->inputs.size(); ++i) {
      if (!model->input_tensors[i].has_value()) {
        Fail(MMOPT_ERROR_STATE, "input " + model->inputs[i].name +
                                    " is not set (mmopt_model_set_input)");
      }
    }
    model->has_results = false;
    model->results.clear();
    std::vector<int64_t> sizes;
    ffi::Function function = model->main;
    const char* function_name = "main";
    if (!model->dims.empty()) {
      sizes = BindAll(model);
      const Call& call = CallFor(model, sizes);
      function = call.call;
      function_name = call.function;
      if (call.blocks.has_value()) args.emplace_back(*call.blocks);
    }
    for (size_t i = 0; i < model->inputs.size(); ++i) args.emplace_back(*model->input_tensors[i]);
    ffi::Any result;
    function.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    std::vector<ffi::Tensor> tensors;
    FlattenTensors(result, &tensors);
    if (tensors.size() != model->outputs.size()) {
      Fail(MMOPT_ERROR_RUNTIME, "the model returned " + std::to_string(tensors.size()) +
                                    " output(s), its description lists " +
                                    std::to_string(model->outputs.size()));
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      const Spec& spec = model->outputs[i];
      const ffi::Tensor& t = tensors[i];
      ffi::ShapeView shape = t.shape();
      bool same = shape.size() == spec.shape.size() && t.dtype() == spec.dl;
      for (size_t d = 0; same && d < shape.size(); ++d) {
        // a fixed size, a dim's bound size, or (-1) any size
        int64_t want = spec.axes[d] >= 0 ? sizes[spec.axes[d]] : spec.shape[d];
        same = want < 0 || shape[d] == want;
      }
      if (!same) {
        Fail(MMOPT_ERROR_RUNTIME, "output " + spec.name + ": the runtime returned " +
                                      std::string(ffi::DLDataTypeToString(t.dtype())) +
                                      ShapeText(shape.data(), shape.size()) +
                                      ", the description says " + spec.dtype_name +
                                      DimsText(spec));
      }
      if (!t.IsContiguous() || t.device().device_type != kDLCPU) {
        Fail(MMOPT_ERROR_RUNTIME, "output " + spec.name + ": not a dense CPU tensor");
      }
    }
    model->results = std::move(tensors);
    model->last_function = function_name;
    model->has_results = true;
  });
}

static const ffi::Tensor& ResultAt(mmopt_model* model, int index) {
  if (!model->has_results) {
    Fail(MMOPT_ERROR_STATE, "no outputs yet: call mmopt_model_run first (or the last run failed)");
  }
  if (index < 0 || static_cast<size_t>(index) >= model->results.size()) {
    Fail(MMOPT_ERROR_INVALID_ARGUMENT, "output index " + std::to_string(index) +
                                           " out of range (the model has " +
                                           std::to_string(model->results.size()) + ")");
  }
  return model->results[index];
}

static const void* DataOf(const ffi::Tensor& t) {
  return static_cast<const char*>(t.data_ptr()) + t.byte_offset();
}

int mmopt_model_output(mmopt_model* model, int index, const void** data, size_t* nbytes) {
  return Guard(MMOPT_ERROR_RUNTIME, [&] {
    RequireModel(model);
    std::lock_guard<std::mutex> lock(model->mutex);
    const ffi::Tensor& t = ResultAt(model, index);
    if (data != nullptr) *data = DataOf(t);
    if (nbytes != nullptr) *nbytes = BytesOf(t, model->outputs[index]);
  });
}

int mmopt_model_copy_output(mmopt_model* model, int index, void* dst, size_t capacity) {
  return Guard(MMOPT_ERROR_RUNTIME, [&] {
    RequireModel(model);
    std::lock_guard<std::mutex> lock(model->mutex);
    const ffi::Tensor& t = ResultAt(model, index);
    size_t n = BytesOf(t, model->outputs[index]);
    if (dst == nullptr && n > 0) Fail(MMOPT_ERROR_INVALID_ARGUMENT, "dst is NULL");
    if (capacity < n) {
      Fail(MMOPT_ERROR_MISMATCH, "output " + model->outputs[index].name + " needs " +
                                     std::to_string(n) + " bytes, the buffer has " +
                                     std::to_string(capacity));
    }
    if (n > 0) std::memcpy(dst, DataOf(t), n);
  });
}

int mmopt_model_output_shape(mmopt_model* model, int index, int32_t* ndim, const int64_t** shape) {
  return Guard(MMOPT_ERROR_RUNTIME, [&] {
    RequireModel(model);
    if (ndim == nullptr || shape == nullptr) {
      Fail(MMOPT_ERROR_INVALID_ARGUMENT, "ndim and shape must not be NULL");
    }
    std::lock_guard<std::mutex> lock(model->mutex);
    const ffi::Tensor& t = ResultAt(model, index);
    *ndim = static_cast<int32_t>(t.ndim());
    *shape = t.ndim() ? t.shape().data() : nullptr;
  });
}

int mmopt_model_num_dims(const mmopt_model* model) {
  if (model == nullptr) return Record(MMOPT_ERROR_INVALID_ARGUMENT, "model is NULL"), -1;
  return static_cast<int>(model->dims.size());
}

int mmopt_model_dim_info(const mmopt_model* model, int index, mmopt_dim_info* info) {
  return Guard(MMOPT_ERROR_INVALID_ARGUMENT, [&] {
    RequireModel(model);
    if (info == nullptr) Fail(MMOPT_ERROR_INVALID_ARGUMENT, "info is NULL");
    if (index < 0 || static_cast<size_t>(index) >= model->dims.size()) {
      Fail(MMOPT_ERROR_INVALID_ARGUMENT, "dim index " + std::to_string(index) +
                                             " out of range (the model has " +
                                             std::to_string(model->dims.size()) + ")");
    }
    const Dim& d = model->dims[index];
    info->name = d.name.c_str();
    info->min = d.min;
    info->max = d.max;
    info->multiple = d.multiple;
  });
}

static int Axes(const mmopt_model* model, int index, const int32_t** dims, bool input) {
  return Guard(MMOPT_ERROR_INVALID_ARGUMENT, [&] {
    RequireModel(model);
    if (dims == nullptr) Fail(MMOPT_ERROR_INVALID_ARGUMENT, "dims is NULL");
    const std::vector<Spec>& specs = input ? model->inputs : model->outputs;
    if (index < 0 || static_cast<size_t>(index) >= specs.size()) {
      Fail(MMOPT_ERROR_INVALID_ARGUMENT, std::string(input ? "input" : "output") + " index " +
                                             std::to_string(index) + " out of range (the model has " +
                                             std::to_string(specs.size()) + ")");
    }
    *dims = specs[index].axes.empty() ? nullptr : specs[index].axes.data();
  });
}

int mmopt_model_input_dims(const mmopt_model* model, int index, const int32_t** dims) {
  return Axes(model, index, dims, true);
}

int mmopt_model_output_dims(const mmopt_model* model, int index, const int32_t** dims) {
  return Axes(model, index, dims, false);
}

int mmopt_model_num_buckets(const mmopt_model* model) {
  if (model == nullptr) return Record(MMOPT_ERROR_INVALID_ARGUMENT, "model is NULL"), -1;
  return static_cast<int>(model->buckets.size());
}

int mmopt_model_bucket_info(const mmopt_model* model, int index, const char** function,
                            const int64_t** sizes) {
  return Guard(MMOPT_ERROR_INVALID_ARGUMENT, [&] {
    RequireModel(model);
    if (index < 0 || static_cast<size_t>(index) >= model->buckets.size()) {
      Fail(MMOPT_ERROR_INVALID_ARGUMENT, "bucket index " + std::to_string(index) +
                                             " out of range (the model has " +
                                             std::to_string(model->buckets.size()) + ")");
    }
    const Bucket& b = model->buckets[index];
    if (function != nullptr) *function = b.function.c_str();
    if (sizes != nullptr) *sizes = b.sizes.empty() ? nullptr : b.sizes.data();
  });
}

int mmopt_model_last_function(mmopt_model* model, const char** name) {
  return Guard(MMOPT_ERROR_RUNTIME, [&] {
    RequireModel(model);
    if (name == nullptr) Fail(MMOPT_ERROR_INVALID_ARGUMENT, "name is NULL");
    std::lock_guard<std::mutex> lock(model->mutex);
    if (!model->has_results) {
      Fail(MMOPT_ERROR_STATE, "no run yet: call mmopt_model_run first (or the last run failed)");
    }
    *name = model->last_function;
  });
}

}  // extern "C"
