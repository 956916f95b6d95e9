// Exceptions of the ts2net C++ library. Every message names the file, field or shape at fault
// and says what to do, so a CLI can print it as one line and exit.
#pragma once

#include <stdexcept>
#include <string>

namespace ts2net {

// Any failure of the library that is the input's fault (not a programming error).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bundle that cannot be used as it is: bad manifest, missing or altered file, invalid export.
class BundleError : public Error {
 public:
  using Error::Error;
};

// A video that cannot be opened or decoded. Never turned into zero frames: a zero clip with mask 0
// would look like a legitimately empty video and give a garbage embedding downstream.
class VideoDecodeError : public Error {
 public:
  VideoDecodeError(const std::string& path, const std::string& reason)
      : Error("cannot decode video '" + path + "': " + reason), path_(path), reason_(reason) {}
  const std::string& path() const { return path_; }
  const std::string& reason() const { return reason_; }

 private:
  std::string path_;
  std::string reason_;
};

}  // namespace ts2net
