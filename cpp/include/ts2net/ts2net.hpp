// The ts2net C++ library: a bundle from manifest.json alone (see docs/cpp.md).
#pragma once

#include "ts2net/bundle.hpp"
#include "ts2net/encoder.hpp"
#include "ts2net/errors.hpp"
#include "ts2net/npy.hpp"
#include "ts2net/parity.hpp"
#include "ts2net/resize.hpp"
#include "ts2net/similarity.hpp"
#include "ts2net/video.hpp"
