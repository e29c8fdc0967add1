#pragma once
// Reading NumPy .npz files: a zip archive (stored or deflated members, zip64 as numpy writes it)
// of .npy arrays. Only what the NPZ converter needs: member lookup, streaming a member's bytes
// through zlib with size and CRC-32 checks, and the .npy header.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <zlib.h>

namespace mpicnn::data::npz {

struct ZipEntry {
  std::string name;
  int method = 0;  // 0 stored, 8 deflated
  std::uint32_t crc = 0;
  std::uint64_t compressed_size = 0, size = 0, local_header = 0;
};

// The central directory of a zip file. IoError "<path>: not a zip file ..." etc.
class ZipFile {
 public:
  explicit ZipFile(std::string path);
  const std::string& path() const { return path_; }
  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const;

 private:
  std::string path_;
  std::vector<ZipEntry> entries_;
};

// Streams one member's uncompressed bytes.
class MemberReader {
 public:
  MemberReader(const ZipFile& zip, const ZipEntry& entry);
  ~MemberReader();
  MemberReader(const MemberReader&) = delete;
  MemberReader& operator=(const MemberReader&) = delete;

  // Exactly n bytes; IoError if the member ends first or its data are damaged.
  void read(void* out, std::size_t n);
  // IoError if bytes are left unread or the CRC-32 differs from the directory's.
  void expect_end();
  std::string where() const;  // "<zip path>: member '<name>'"

 private:
  std::size_t fill_input();

  std::string path_;
  ZipEntry entry_;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file_;
  z_stream zstream_{};
  bool inflating_ = false;
  std::vector<unsigned char> input_;
  std::uint64_t compressed_left_ = 0, produced_ = 0;
  std::uint32_t crc_ = 0;
};

// The header of a .npy array: dtype descr (e.g. "|u1", "<i8"), order and shape.
struct NpyHeader {
  std::string descr;
  char kind = 0;             // 'u' unsigned, 'i' signed, 'f' float, 'b' bool
  std::size_t item_size = 0;
  bool fortran_order = false;
  std::vector<std::uint64_t> shape;
  std::uint64_t count() const;
};
// Reads and parses the header; the member is then positioned at the array data. Only
// little-endian (or byte-sized) numeric dtypes in C order are accepted.
NpyHeader read_npy_header(MemberReader& member);

}  // namespace mpicnn::data::npz
