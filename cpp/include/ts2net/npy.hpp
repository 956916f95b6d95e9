// NumPy .npy files and the stored (uncompressed) .npz archives the exporter writes.
//
// An .npz is a zip archive of .npy members; `np.savez` stores them without compression, so the
// reader only walks the zip central directory (zip64 extras included) and parses each member's
// .npy header. A deflated member is refused with a message, never misread.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ts2net {

// One array as stored: NumPy's dtype descriptor ("<f4", "<i8", "|u1", "|b1", ...), C-order shape,
// and the raw little-endian bytes.
struct NpyArray {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  int64_t size() const;              // number of elements
  size_t item_size() const;          // bytes per element
  std::string shape_str() const;     // "[6, 12, 3]"
  // Element values converted to float32 / int64 (dtype must be numeric; names `where` otherwise).
  std::vector<float> to_float32(const std::string& where) const;
  std::vector<int64_t> to_int64(const std::string& where) const;
};

// Parse one .npy image held in memory; `where` names it in error messages.
NpyArray parse_npy(const uint8_t* data, size_t size, const std::string& where);
NpyArray read_npy(const std::string& path);

// Write an .npy atomically (temporary file beside it, then rename), so a crash never leaves half
// a file under the final name. `dtype` is a NumPy descriptor such as "<f4".
void write_npy(const std::string& path, const std::string& dtype, const std::vector<int64_t>& shape,
               const void* data, size_t nbytes);
void write_npy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<float>& values);
void write_npy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<uint8_t>& values);

// The named members of an uncompressed .npz (a missing name is an Error listing what is there).
std::map<std::string, NpyArray> read_npz(const std::string& path, const std::vector<std::string>& names);

// Atomic text write (same temporary-file-and-rename rule as write_npy).
void write_text_file(const std::string& path, const std::string& text);

}  // namespace ts2net
