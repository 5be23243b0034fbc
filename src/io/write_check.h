// Private: checks that a file an external writer (ITK) made is complete.
#pragma once

#include <string>

namespace drdm::detail {

/// Throws std::runtime_error unless the compressed data of `path` is
/// complete: a gzip file (any file starting with the gzip magic) must
/// inflate to the end of its last member with matching CRC and length; a
/// MetaImage file with CompressedData = True must hold CompressedDataSize
/// bytes of data, and they must inflate to the end of their zlib stream.
/// Other files pass (their size is checked by the image reader). With
/// `inflate` false only the sizes are checked: for a caller that has
/// inflated the data to the end already (the image reader's data check).
void check_compressed_data_complete(const std::string& path, bool inflate = true);

}  // namespace drdm::detail
