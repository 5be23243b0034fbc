// read_torch_state_dict (drdm/diffusion/import.h): a state dict written by Python's
// torch.save in the zip format, read without Python.
//
// LibTorch's own torch::pickle_load cannot read these files: it turns the
// collections.OrderedDict that holds a state dict into None (and it restores
// CUDA-saved tensors onto a GPU). So data.pkl is interpreted here by a small
// pickle machine that knows the protocol-2 opcodes torch.save emits for a
// dict of tensors; tensor bytes come from the archive's data/<key> records.
#include <caffe2/serialize/inline_container.h>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "drdm/diffusion/import.h"
#include "io/files.h"

namespace drdm {
namespace {

struct Value;
using ValuePtr = std::shared_ptr<Value>;

// The pickle values a state dict needs. Dicts keep (key, value) pairs in order.
struct Value {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kTuple, kDict, kGlobal, kTensor, kMark };
  Kind kind = Kind::kNone;
  int64_t i = 0;
  double f = 0;
  std::string s;                // string, or "module name" of a global
  std::vector<ValuePtr> items;  // tuple items; dict: key, value, key, value, ...
  torch::Tensor tensor;         // a storage (1-D) or a rebuilt tensor
};

ValuePtr make(Value::Kind kind) {
  auto v = std::make_shared<Value>();
  v->kind = kind;
  return v;
}

torch::ScalarType storage_dtype(const std::string& global) {
  static const std::unordered_map<std::string, torch::ScalarType> types{
      {"torch FloatStorage", torch::kFloat}, {"torch DoubleStorage", torch::kDouble},
      {"torch HalfStorage", torch::kHalf},   {"torch BFloat16Storage", torch::kBFloat16},
      {"torch LongStorage", torch::kLong},   {"torch IntStorage", torch::kInt},
      {"torch ShortStorage", torch::kShort}, {"torch CharStorage", torch::kChar},
      {"torch ByteStorage", torch::kByte},   {"torch BoolStorage", torch::kBool}};
  const auto it = types.find(global);
  if (it == types.end()) throw std::runtime_error("unsupported storage type '" + global + "'");
  return it->second;
}

class Machine {
 public:
  Machine(caffe2::serialize::PyTorchStreamReader& archive, const char* data, size_t size)
      : archive_(archive), data_(data), size_(size) {}

  ValuePtr run() {
    while (true) {
      const auto op = static_cast<uint8_t>(byte());
      if (op == '.') break;  // STOP
      if (!literal(op) && !structure(op) && !memo_or_call(op))
        throw std::runtime_error("unsupported pickle opcode 0x" + hex(op) + " at byte " +
                                 std::to_string(pos_ - 1));
    }
    if (stack_.size() != 1) throw std::runtime_error("malformed pickle (stack)");
    return stack_.back();
  }

 private:
  static std::string hex(uint8_t b) {
    const char* d = "0123456789abcdef";
    return {d[b >> 4], d[b & 15]};
  }
  const char* take(size_t n) {
    if (n > size_ - pos_) throw std::runtime_error("truncated pickle");
    const char* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  char byte() { return *take(1); }
  uint64_t le(size_t n) {  // unsigned little-endian integer of n bytes
    const auto* p = reinterpret_cast<const unsigned char*>(take(n));
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(p[k]) << (8 * k);
    return v;
  }
  std::string line() {
    std::string s;
    for (char c = byte(); c != '\n'; c = byte()) s += c;
    return s;
  }
  const ValuePtr& top() const {
    if (stack_.empty()) throw std::runtime_error("malformed pickle (empty stack)");
    return stack_.back();
  }
  ValuePtr pop() {
    if (stack_.empty()) throw std::runtime_error("malformed pickle (empty stack)");
    auto v = stack_.back();
    stack_.pop_back();
    return v;
  }
  std::vector<ValuePtr> pop_to_mark() {
    std::vector<ValuePtr> out;
    for (auto v = pop(); v->kind != Value::Kind::kMark; v = pop()) out.insert(out.begin(), v);
    return out;
  }
  void push_int(int64_t i) {
    stack_.push_back(make(Value::Kind::kInt));
    stack_.back()->i = i;
  }

  // Numbers, strings, constants.
  bool literal(uint8_t op) {
    switch (op) {
      case 0x80:
        take(1);
        return true;  // PROTO
      case 'K':
        push_int(static_cast<int64_t>(le(1)));
        return true;
      case 'M':
        push_int(static_cast<int64_t>(le(2)));
        return true;
      case 'J':
        push_int(static_cast<int32_t>(le(4)));
        return true;
      case 0x8a:
        push_int(long1());
        return true;
      case 'X': {
        const auto n = le(4);
        stack_.push_back(make(Value::Kind::kString));
        stack_.back()->s.assign(take(n), n);
        return true;
      }
      case 'G': {
        uint64_t bits = 0;
        for (int k = 0; k < 8; ++k) bits = (bits << 8) | static_cast<unsigned char>(byte());
        stack_.push_back(make(Value::Kind::kFloat));
        std::memcpy(&stack_.back()->f, &bits, 8);
        return true;
      }
      case 'N':
        stack_.push_back(make(Value::Kind::kNone));
        return true;
      case 0x88:
      case 0x89:
        stack_.push_back(make(Value::Kind::kBool));
        stack_.back()->i = op == 0x88;
        return true;
      default:
        return false;
    }
  }
  int64_t long1() {
    const auto n = le(1);
    if (n > 8) throw std::runtime_error("pickle integer too large");
    auto v = n ? le(n) : 0;
    if (n && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign
    return static_cast<int64_t>(v);
  }

  // Tuples, dicts, marks.
  bool structure(uint8_t op) {
    switch (op) {
      case '(':
        stack_.push_back(make(Value::Kind::kMark));
        return true;
      case ')':
        stack_.push_back(make(Value::Kind::kTuple));
        return true;
      case '}':
        stack_.push_back(make(Value::Kind::kDict));
        return true;
      case 't':
        tuple(pop_to_mark());
        return true;
      case 0x85:
      case 0x86:
      case 0x87: {
        std::vector<ValuePtr> items(op - 0x84);
        for (auto k = items.size(); k-- > 0;) items[k] = pop();
        tuple(std::move(items));
        return true;
      }
      case 's': {
        auto value = pop(), key = pop();
        dict_insert({key, value});
        return true;
      }
      case 'u':
        dict_insert(pop_to_mark());
        return true;
      case 'b':
        pop();
        return true;  // BUILD: an OrderedDict's _metadata, not needed
      default:
        return false;
    }
  }
  void tuple(std::vector<ValuePtr> items) {
    stack_.push_back(make(Value::Kind::kTuple));
    stack_.back()->items = std::move(items);
  }
  void dict_insert(const std::vector<ValuePtr>& pairs) {
    if (stack_.empty() || stack_.back()->kind != Value::Kind::kDict || pairs.size() % 2)
      throw std::runtime_error("malformed pickle (SETITEM without a dict)");
    auto& items = stack_.back()->items;
    items.insert(items.end(), pairs.begin(), pairs.end());
  }

  // Memo, globals, calls, persistent storages.
  bool memo_or_call(uint8_t op) {
    switch (op) {
      case 'q':
        memo_[le(1)] = top();
        return true;
      case 'r':
        memo_[le(4)] = top();
        return true;
      case 'h':
      case 'j': {
        const auto it = memo_.find(le(op == 'h' ? 1 : 4));
        if (it == memo_.end()) throw std::runtime_error("malformed pickle (memo)");
        stack_.push_back(it->second);
        return true;
      }
      case 'c': {
        auto g = make(Value::Kind::kGlobal);
        g->s = line();
        g->s += " " + line();
        stack_.push_back(g);
        return true;
      }
      case 'R': {
        auto args = pop(), callable = pop();
        stack_.push_back(call(*callable, *args));
        return true;
      }
      case 'Q':
        stack_.push_back(storage(*pop()));
        return true;
      default:
        return false;
    }
  }

  ValuePtr call(const Value& callable, const Value& args) {
    if (callable.kind == Value::Kind::kGlobal && callable.s == "collections OrderedDict")
      return make(Value::Kind::kDict);
    if (callable.kind == Value::Kind::kGlobal && callable.s == "torch._utils _rebuild_tensor_v2")
      return rebuild_tensor(args);
    throw std::runtime_error("unsupported call of '" + callable.s + "'");
  }

  // ('storage', <torch XStorage>, key, location, numel): data/<key>, on the CPU.
  ValuePtr storage(const Value& pid) {
    const auto& p = pid.items;
    if (pid.kind != Value::Kind::kTuple || p.size() != 5 || p[0]->s != "storage")
      throw std::runtime_error("unsupported persistent id in pickle");
    const auto& key = p[2]->s;
    auto& cached = storages_[key];
    if (cached) return cached;
    const auto dtype = storage_dtype(p[1]->s);
    auto t = torch::empty({p[4]->i}, torch::TensorOptions().dtype(dtype));
    const auto record = "data/" + key;
    if (archive_.getRecordSize(record) != static_cast<size_t>(t.nbytes()))
      throw std::runtime_error("record '" + record + "' does not hold " + std::to_string(p[4]->i) +
                               " elements");
    archive_.getRecord(record, t.data_ptr(), t.nbytes());
    cached = make(Value::Kind::kTensor);
    cached->tensor = t;
    return cached;
  }

  static std::vector<int64_t> ints(const Value& tuple) {
    std::vector<int64_t> out;
    for (const auto& v : tuple.items) out.push_back(v->i);
    return out;
  }

  // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]).
  ValuePtr rebuild_tensor(const Value& args) {
    const auto& a = args.items;
    if (a.size() < 4 || a[0]->kind != Value::Kind::kTensor)
      throw std::runtime_error("malformed _rebuild_tensor_v2 call");
    const auto size = ints(*a[2]), stride = ints(*a[3]);
    int64_t last = a[1]->i;
    for (size_t k = 0; k < size.size(); ++k) {
      if (size[k] == 0) last = -1;
      if (last >= 0) last += (size[k] - 1) * stride[k];
    }
    if (size.size() != stride.size() || a[1]->i < 0 || last >= a[0]->tensor.numel())
      throw std::runtime_error("tensor view outside its storage");
    auto v = make(Value::Kind::kTensor);
    v->tensor = a[0]->tensor.as_strided(size, stride, a[1]->i).clone();
    return v;
  }

  caffe2::serialize::PyTorchStreamReader& archive_;
  const char* data_;
  size_t size_;
  size_t pos_ = 0;
  std::vector<ValuePtr> stack_;
  std::unordered_map<uint64_t, ValuePtr> memo_;
  std::unordered_map<std::string, ValuePtr> storages_;
};

StateDict state_dict_from(const Value& root) {
  if (root.kind != Value::Kind::kDict) throw std::runtime_error("it does not hold a dict");
  StateDict out;
  for (size_t k = 0; k + 1 < root.items.size(); k += 2) {
    const auto& key = *root.items[k];
    const auto& value = *root.items[k + 1];
    if (key.kind != Value::Kind::kString) throw std::runtime_error("a key is not a string");
    if (value.kind != Value::Kind::kTensor)
      throw std::runtime_error("entry '" + key.s + "' is not a tensor");
    out[key.s] = value.tensor;
  }
  return out;
}

}  // namespace

StateDict read_torch_state_dict(const std::string& path) {
  if (!detail::file_exists(path)) throw std::runtime_error("'" + path + "' does not exist");
  try {
    caffe2::serialize::PyTorchStreamReader archive(path);
    if (archive.hasRecord("byteorder")) {
      auto [bytes, n] = archive.getRecord("byteorder");
      if (std::string(static_cast<const char*>(bytes.get()), n) != "little")
        throw std::runtime_error("big-endian tensors are not supported");
    }
    auto [pickle, size] = archive.getRecord("data.pkl");
    Machine machine(archive, static_cast<const char*>(pickle.get()), size);
    return state_dict_from(*machine.run());
  } catch (const c10::Error& e) {
    throw std::runtime_error("cannot read '" + path +
                             "' as a torch.save zip archive: " + e.what_without_backtrace());
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("cannot read '" + path + "' as a torch.save state dict: " + e.what());
  }
}

}  // namespace drdm
