// .npy parsing/writing and the stored-zip reader for .npz (format facts in docs/cpp.md).
#include "ts2net/npy.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "ts2net/errors.hpp"

namespace ts2net {
namespace {

uint16_t le16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
uint32_t le32(const uint8_t* p) { return uint32_t(le16(p)) | (uint32_t(le16(p + 2)) << 16); }
uint64_t le64(const uint8_t* p) { return uint64_t(le32(p)) | (uint64_t(le32(p + 4)) << 32); }

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open for reading (missing or unreadable)");
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return data;
}

// Value of 'key': in the header's Python dict literal (NumPy writes it in a fixed form).
std::string header_field(const std::string& header, const std::string& key, const std::string& where) {
  auto pos = header.find("'" + key + "'");
  if (pos == std::string::npos) throw Error(where + ": .npy header has no '" + key + "' field");
  pos = header.find(':', pos);
  if (pos == std::string::npos) throw Error(where + ": malformed .npy header");
  ++pos;
  while (pos < header.size() && header[pos] == ' ') ++pos;
  if (header[pos] == '\'') {
    auto end = header.find('\'', pos + 1);
    return header.substr(pos + 1, end - pos - 1);
  }
  if (header[pos] == '(') {
    auto end = header.find(')', pos);
    return header.substr(pos, end - pos + 1);
  }
  auto end = header.find_first_of(",}", pos);
  return header.substr(pos, end - pos);
}

void atomic_write(const std::string& path, const std::string& prefix, const void* data, size_t nbytes) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(path + ": cannot write (does the folder exist and is it writable?)");
    out.write(prefix.data(), std::streamsize(prefix.size()));
    out.write(static_cast<const char*>(data), std::streamsize(nbytes));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw Error(path + ": write failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(path + ": cannot replace the file: " + std::strerror(errno));
  }
}

}  // namespace

int64_t NpyArray::size() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

size_t NpyArray::item_size() const { return dtype.size() >= 3 ? size_t(std::stoi(dtype.substr(2))) : 0; }

std::string NpyArray::shape_str() const {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

std::vector<float> NpyArray::to_float32(const std::string& where) const {
  std::vector<float> out(static_cast<size_t>(size()));
  const uint8_t* p = bytes.data();
  if (dtype == "<f4") {
    std::memcpy(out.data(), p, out.size() * 4);
  } else if (dtype == "<f8") {
    for (size_t i = 0; i < out.size(); ++i) { double v; std::memcpy(&v, p + 8 * i, 8); out[i] = float(v); }
  } else {
    throw Error(where + ": dtype " + dtype + ", expected float32 ('<f4') or float64");
  }
  return out;
}

std::vector<int64_t> NpyArray::to_int64(const std::string& where) const {
  std::vector<int64_t> out(static_cast<size_t>(size()));
  const uint8_t* p = bytes.data();
  for (size_t i = 0; i < out.size(); ++i) {
    if (dtype == "<i8") { std::memcpy(&out[i], p + 8 * i, 8); }
    else if (dtype == "<i4") { int32_t v; std::memcpy(&v, p + 4 * i, 4); out[i] = v; }
    else if (dtype == "|u1" || dtype == "|b1") { out[i] = p[i]; }
    else if (dtype == "|i1") { out[i] = int8_t(p[i]); }
    else throw Error(where + ": dtype " + dtype + ", expected an integer or bool array");
  }
  return out;
}

NpyArray parse_npy(const uint8_t* data, size_t size, const std::string& where) {
  static const char magic[] = "\x93NUMPY";
  if (size < 10 || std::memcmp(data, magic, 6) != 0) throw Error(where + ": not an .npy file (bad magic)");
  const int major = data[6];
  size_t header_len, offset;
  if (major == 1) { header_len = le16(data + 8); offset = 10; }
  else if (major == 2 || major == 3) { header_len = le32(data + 8); offset = 12; }
  else throw Error(where + ": unsupported .npy version " + std::to_string(major));
  if (offset + header_len > size) throw Error(where + ": truncated .npy header");
  std::string header(reinterpret_cast<const char*>(data + offset), header_len);
  NpyArray array;
  array.dtype = header_field(header, "descr", where);
  if (header_field(header, "fortran_order", where) != "False")
    throw Error(where + ": Fortran-order arrays are not supported; save a C-contiguous array");
  std::string shape = header_field(header, "shape", where);
  for (size_t i = 1; i < shape.size();) {
    while (i < shape.size() && (shape[i] == ' ' || shape[i] == ',')) ++i;
    if (i >= shape.size() || shape[i] == ')') break;
    size_t used = 0;
    array.shape.push_back(std::stoll(shape.substr(i), &used));
    i += used;
  }
  const bool numeric = array.dtype.size() >= 3 && (array.dtype[0] == '<' || array.dtype[0] == '|') &&
                       std::string("fiub").find(array.dtype[1]) != std::string::npos;
  if (!numeric) throw Error(where + ": dtype " + array.dtype + " is not a little-endian numeric dtype");
  const size_t nbytes = size_t(array.size()) * array.item_size();
  offset += header_len;
  if (offset + nbytes > size)
    throw Error(where + ": truncated data (" + std::to_string(size - offset) + " bytes for shape " +
                array.shape_str() + " " + array.dtype + ", expected " + std::to_string(nbytes) + ")");
  array.bytes.assign(data + offset, data + offset + nbytes);
  return array;
}

NpyArray read_npy(const std::string& path) {
  auto data = read_all(path);
  return parse_npy(data.data(), data.size(), path);
}

void write_npy(const std::string& path, const std::string& dtype, const std::vector<int64_t>& shape,
               const void* data, size_t nbytes) {
  std::string shape_str = "(";
  for (size_t i = 0; i < shape.size(); ++i) shape_str += (i ? ", " : "") + std::to_string(shape[i]);
  shape_str += shape.size() == 1 ? ",)" : ")";
  std::string header = "{'descr': '" + dtype + "', 'fortran_order': False, 'shape': " + shape_str + ", }";
  // magic (6) + version (2) + length (2) + header + padding + '\n' is a multiple of 64 bytes
  size_t total = 10 + header.size() + 1;
  header += std::string((64 - total % 64) % 64, ' ') + "\n";
  std::string prefix = std::string("\x93NUMPY\x01\x00", 8);
  prefix += char(header.size() & 0xff);
  prefix += char((header.size() >> 8) & 0xff);
  prefix += header;
  atomic_write(path, prefix, data, nbytes);
}

void write_npy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<float>& values) {
  write_npy(path, "<f4", shape, values.data(), values.size() * sizeof(float));
}

void write_npy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<uint8_t>& values) {
  write_npy(path, "|u1", shape, values.data(), values.size());
}

void write_text_file(const std::string& path, const std::string& text) { atomic_write(path, text, "", 0); }

std::map<std::string, NpyArray> read_npz(const std::string& path, const std::vector<std::string>& names) {
  auto zip = read_all(path);
  const size_t n = zip.size();
  // End of central directory record: signature 0x06054b50, within the last 64 KiB + 22 bytes.
  size_t eocd = std::string::npos;
  if (n >= 22) {
    const size_t lowest = n > 22 + 65535 ? n - 22 - 65535 : 0;
    for (size_t i = n - 22 + 1; i-- > lowest;) {
      if (le32(&zip[i]) == 0x06054b50) { eocd = i; break; }
    }
  }
  if (eocd == std::string::npos) throw Error(path + ": not a zip/.npz archive (no end of central directory)");
  uint64_t entries = le16(&zip[eocd + 10]);
  uint64_t cd_offset = le32(&zip[eocd + 16]);
  if (cd_offset == 0xffffffffu || entries == 0xffff) {  // zip64: locator 20 bytes before the EOCD
    if (eocd < 20 || le32(&zip[eocd - 20]) != 0x07064b50) throw Error(path + ": zip64 archive without locator");
    uint64_t rec = le64(&zip[eocd - 20 + 8]);
    if (rec + 56 > n || le32(&zip[rec]) != 0x06064b50) throw Error(path + ": bad zip64 end record");
    entries = le64(&zip[rec + 32]);
    cd_offset = le64(&zip[rec + 48]);
  }
  std::map<std::string, std::pair<uint64_t, uint64_t>> members;  // name -> (data offset, size)
  std::map<std::string, int> methods;
  size_t p = size_t(cd_offset);
  for (uint64_t e = 0; e < entries; ++e) {
    if (p + 46 > n || le32(&zip[p]) != 0x02014b50) throw Error(path + ": corrupt zip central directory");
    int method = le16(&zip[p + 10]);
    uint64_t csize = le32(&zip[p + 20]), usize = le32(&zip[p + 24]);
    size_t name_len = le16(&zip[p + 28]), extra_len = le16(&zip[p + 30]), comment_len = le16(&zip[p + 32]);
    uint64_t local = le32(&zip[p + 42]);
    std::string name(reinterpret_cast<const char*>(&zip[p + 46]), name_len);
    // zip64 extended information: the fields that are 0xffffffff above, in this order
    for (size_t x = p + 46 + name_len; x + 4 <= p + 46 + name_len + extra_len;) {
      uint16_t id = le16(&zip[x]), len = le16(&zip[x + 2]);
      if (id == 0x0001) {
        size_t f = x + 4;
        if (usize == 0xffffffffu) { usize = le64(&zip[f]); f += 8; }
        if (csize == 0xffffffffu) { csize = le64(&zip[f]); f += 8; }
        if (local == 0xffffffffu) { local = le64(&zip[f]); }
      }
      x += 4 + len;
    }
    if (local + 30 > n || le32(&zip[local]) != 0x04034b50) throw Error(path + ": corrupt zip local header for " + name);
    uint64_t data = local + 30 + le16(&zip[local + 26]) + le16(&zip[local + 28]);
    members[name] = {data, csize};
    methods[name] = method;
    (void)usize;
    p += 46 + name_len + extra_len + comment_len;
  }
  std::map<std::string, NpyArray> out;
  for (const auto& wanted : names) {
    auto it = members.find(wanted + ".npy");
    if (it == members.end()) {
      std::string have;
      for (const auto& m : members) have += (have.empty() ? "" : ", ") + m.first;
      throw Error(path + ": no array '" + wanted + "' (archive holds " + have + "); re-export the bundle");
    }
    if (methods[it->first] != 0)
      throw Error(path + ": member " + it->first + " is compressed (method " + std::to_string(methods[it->first]) +
                  "); only stored (np.savez, not savez_compressed) archives are read");
    if (it->second.first + it->second.second > n) throw Error(path + ": member " + it->first + " is truncated");
    out[wanted] = parse_npy(&zip[it->second.first], size_t(it->second.second), path + ":" + it->first);
  }
  return out;
}

}  // namespace ts2net
