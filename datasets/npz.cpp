#include "datasets/npz.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>

#include "core/errors.hpp"
#include "core/parse.hpp"

namespace mpicnn::data::npz {
namespace {

constexpr std::uint32_t kLocalHeader = 0x04034b50, kCentralHeader = 0x02014b50, kEnd = 0x06054b50,
                        kZip64End = 0x06064b50, kZip64Locator = 0x07064b50;

std::uint64_t le(const unsigned char* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

using File = std::unique_ptr<std::FILE, int (*)(std::FILE*)>;

File open(const std::string& path) {
  File file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) throw IoError(path + ": cannot open file: " + std::strerror(errno));
  return file;
}

void read_at(std::FILE* file, const std::string& path, std::uint64_t offset, void* out, std::size_t n) {
  if (fseeko(file, off_t(offset), SEEK_SET) != 0 || std::fread(out, 1, n, file) != n)
    throw IoError(path + ": zip file truncated or damaged (cannot read " + std::to_string(n) + " bytes at offset " +
                  std::to_string(offset) + ")");
}

}  // namespace

ZipFile::ZipFile(std::string path) : path_(std::move(path)) {
  File file = open(path_);
  fseeko(file.get(), 0, SEEK_END);
  const std::uint64_t size = std::uint64_t(ftello(file.get()));
  if (size < 22) throw IoError(path_ + ": not a zip (.npz) file: " + std::to_string(size) + " bytes, too short");
  // The end record is the last 22 bytes plus a comment of up to 65535 bytes.
  const std::uint64_t tail = std::min<std::uint64_t>(size, 22 + 65535);
  std::vector<unsigned char> buffer(tail);
  read_at(file.get(), path_, size - tail, buffer.data(), tail);
  std::int64_t at = std::int64_t(tail) - 22;
  while (at >= 0 && le(&buffer[std::size_t(at)], 4) != kEnd) --at;
  if (at < 0) throw IoError(path_ + ": not a zip (.npz) file: no end-of-central-directory record");
  const unsigned char* end = &buffer[std::size_t(at)];
  std::uint64_t count = le(end + 10, 2), directory_size = le(end + 12, 4), directory_offset = le(end + 16, 4);
  const std::uint64_t end_offset = size - tail + std::uint64_t(at);
  if (count == 0xFFFF || directory_size == 0xFFFFFFFF || directory_offset == 0xFFFFFFFF) {
    unsigned char locator[20];
    if (end_offset < 20) throw IoError(path_ + ": zip64 end record missing");
    read_at(file.get(), path_, end_offset - 20, locator, 20);
    if (le(locator, 4) != kZip64Locator) throw IoError(path_ + ": zip64 end record locator missing");
    unsigned char record[56];
    read_at(file.get(), path_, le(locator + 8, 8), record, 56);
    if (le(record, 4) != kZip64End) throw IoError(path_ + ": zip64 end record damaged");
    count = le(record + 32, 8);
    directory_size = le(record + 40, 8);
    directory_offset = le(record + 48, 8);
  }
  if (directory_offset + directory_size > size)
    throw IoError(path_ + ": zip file truncated: central directory beyond the end of the file");
  std::vector<unsigned char> directory(directory_size);
  read_at(file.get(), path_, directory_offset, directory.data(), directory.size());
  std::size_t pos = 0;
  for (std::uint64_t i = 0; i < count; ++i) {
    if (pos + 46 > directory.size() || le(&directory[pos], 4) != kCentralHeader)
      throw IoError(path_ + ": zip central directory damaged at entry " + std::to_string(i));
    const unsigned char* h = &directory[pos];
    ZipEntry e;
    const std::uint64_t flags = le(h + 8, 2);
    e.method = int(le(h + 10, 2));
    e.crc = std::uint32_t(le(h + 16, 4));
    e.compressed_size = le(h + 20, 4);
    e.size = le(h + 24, 4);
    const std::size_t name_length = le(h + 28, 2), extra_length = le(h + 30, 2), comment_length = le(h + 32, 2);
    e.local_header = le(h + 42, 4);
    if (pos + 46 + name_length + extra_length + comment_length > directory.size())
      throw IoError(path_ + ": zip central directory damaged at entry " + std::to_string(i));
    e.name.assign(reinterpret_cast<const char*>(h + 46), name_length);
    // zip64: the sizes and offset that do not fit 32 bits are in extra field 0x0001, in this order.
    const unsigned char* extra = h + 46 + name_length;
    for (std::size_t x = 0; x + 4 <= extra_length;) {
      const std::uint64_t id = le(extra + x, 2), length = le(extra + x + 2, 2);
      if (x + 4 + length > extra_length) break;
      if (id == 0x0001) {
        const unsigned char* field = extra + x + 4;
        std::size_t used = 0;
        for (std::uint64_t* value : {&e.size, &e.compressed_size, &e.local_header})
          if (*value == 0xFFFFFFFF && used + 8 <= length) {
            *value = le(field + used, 8);
            used += 8;
          }
      }
      x += 4 + length;
    }
    if (flags & 1) throw IoError(path_ + ": member '" + e.name + "' is encrypted, which is not supported");
    if (e.method != 0 && e.method != 8)
      throw IoError(path_ + ": member '" + e.name + "' uses zip compression method " + std::to_string(e.method) +
                    ", expected 0 (stored) or 8 (deflated)");
    entries_.push_back(std::move(e));
    pos += 46 + name_length + extra_length + comment_length;
  }
}

const ZipEntry* ZipFile::find(const std::string& name) const {
  for (const ZipEntry& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

MemberReader::MemberReader(const ZipFile& zip, const ZipEntry& entry)
    : path_(zip.path()), entry_(entry), file_(open(zip.path())) {
  unsigned char header[30];
  read_at(file_.get(), path_, entry_.local_header, header, 30);
  if (le(header, 4) != kLocalHeader) throw IoError(where() + ": local header damaged");
  const std::uint64_t data = entry_.local_header + 30 + le(header + 26, 2) + le(header + 28, 2);
  if (fseeko(file_.get(), off_t(data), SEEK_SET) != 0) throw IoError(where() + ": cannot seek to the data");
  compressed_left_ = entry_.compressed_size;
  crc_ = std::uint32_t(crc32(0, nullptr, 0));
  input_.resize(1 << 16);
  if (entry_.method == 8) {
    if (inflateInit2(&zstream_, -MAX_WBITS) != Z_OK) throw IoError(where() + ": zlib initialisation failed");
    inflating_ = true;
  }
}

MemberReader::~MemberReader() {
  if (inflating_) inflateEnd(&zstream_);
}

std::string MemberReader::where() const { return path_ + ": member '" + entry_.name + "'"; }

std::size_t MemberReader::fill_input() {
  const std::size_t want = std::size_t(std::min<std::uint64_t>(input_.size(), compressed_left_));
  if (want == 0) return 0;
  if (std::fread(input_.data(), 1, want, file_.get()) != want)
    throw IoError(where() + ": file truncated (compressed data end early)");
  compressed_left_ -= want;
  return want;
}

void MemberReader::read(void* out, std::size_t n) {
  if (produced_ + n > entry_.size)
    throw IoError(where() + ": holds " + std::to_string(entry_.size) + " bytes, expected at least " +
                  std::to_string(produced_ + n));
  auto* bytes = static_cast<unsigned char*>(out);
  if (!inflating_) {
    std::size_t done = 0;
    while (done < n) {
      const std::size_t want = std::size_t(std::min<std::uint64_t>(n - done, compressed_left_));
      if (want == 0 || std::fread(bytes + done, 1, want, file_.get()) != want)
        throw IoError(where() + ": file truncated (data end early)");
      compressed_left_ -= want;
      done += want;
    }
  } else {
    zstream_.next_out = bytes;
    std::size_t left = n;
    while (left > 0) {
      // zlib's avail_out is 32-bit: feed large reads in pieces.
      const std::size_t piece = std::min<std::size_t>(left, 1u << 30);
      zstream_.avail_out = uInt(piece);
      while (zstream_.avail_out > 0) {
        if (zstream_.avail_in == 0) {
          zstream_.avail_in = uInt(fill_input());
          zstream_.next_in = input_.data();
        }
        const int status = inflate(&zstream_, Z_NO_FLUSH);
        if (status == Z_STREAM_END) {
          if (zstream_.avail_out > 0) throw IoError(where() + ": compressed data end early");
        } else if (status == Z_BUF_ERROR) {  // no progress: only possible when the input is used up
          if (zstream_.avail_in == 0 && compressed_left_ == 0) throw IoError(where() + ": compressed data end early");
        } else if (status != Z_OK) {
          throw IoError(where() + ": damaged compressed data (zlib: " + (zstream_.msg ? zstream_.msg : "error") + ")");
        }
      }
      left -= piece;
    }
  }
  for (std::size_t done = 0; done < n;) {
    const std::size_t piece = std::min<std::size_t>(n - done, 1u << 30);
    crc_ = std::uint32_t(crc32(crc_, bytes + done, uInt(piece)));
    done += piece;
  }
  produced_ += n;
}

void MemberReader::expect_end() {
  if (produced_ != entry_.size)
    throw IoError(where() + ": " + std::to_string(entry_.size - produced_) + " bytes left unread, expected none");
  if (crc_ != entry_.crc) throw IoError(where() + ": CRC-32 mismatch, the data are damaged");
}

std::uint64_t NpyHeader::count() const {
  std::uint64_t n = 1;
  for (std::uint64_t d : shape) n *= d;
  return n;
}

NpyHeader read_npy_header(MemberReader& member) {
  unsigned char prefix[10];
  member.read(prefix, 10);
  if (std::memcmp(prefix, "\x93NUMPY", 6) != 0) throw IoError(member.where() + ": not a .npy array (no NUMPY magic)");
  std::size_t length = 0;
  if (prefix[6] == 1) {
    length = le(prefix + 8, 2);
  } else if (prefix[6] == 2 || prefix[6] == 3) {
    unsigned char more[2];
    member.read(more, 2);
    length = std::size_t(le(prefix + 8, 2) | (le(more, 2) << 16));
  } else {
    throw IoError(member.where() + ": .npy format version " + std::to_string(prefix[6]) + " not supported");
  }
  std::string text(length, '\0');
  member.read(text.data(), length);
  auto value_of = [&](const std::string& key) {
    const std::size_t at = text.find("'" + key + "'");
    if (at == std::string::npos) throw IoError(member.where() + ": .npy header has no '" + key + "': " + text);
    std::size_t colon = text.find(':', at);
    if (colon == std::string::npos) throw IoError(member.where() + ": bad .npy header: " + text);
    return colon + 1;
  };
  NpyHeader header;
  std::size_t at = text.find_first_of("'\"", value_of("descr"));
  const std::size_t close = at == std::string::npos ? at : text.find(text[at], at + 1);
  if (close == std::string::npos)
    throw IoError(member.where() + ": .npy dtype is not a simple type: " + text);
  header.descr = text.substr(at + 1, close - at - 1);
  at = text.find_first_not_of(' ', value_of("fortran_order"));
  header.fortran_order = text.compare(at, 4, "True") == 0;
  at = text.find('(', value_of("shape"));
  const std::size_t end = text.find(')', at);
  if (at == std::string::npos || end == std::string::npos) throw IoError(member.where() + ": bad .npy shape: " + text);
  for (std::size_t p = at + 1; p < end;) {
    const std::size_t digits = text.find_first_of("0123456789", p);
    if (digits == std::string::npos || digits >= end) break;
    std::uint64_t dim = 0;
    const auto [next, error] = std::from_chars(text.data() + digits, text.data() + end, dim);
    if (error != std::errc()) throw IoError(member.where() + ": bad .npy shape (a dimension beyond 64 bits): " + text);
    header.shape.push_back(dim);
    p = std::size_t(next - text.data());
  }
  const std::string& d = header.descr;
  if (d.size() < 3 || (d[0] != '<' && d[0] != '|') || std::string("uifb").find(d[1]) == std::string::npos)
    throw IoError(member.where() + ": .npy dtype '" + d + "' not supported, expected a little-endian number type");
  header.kind = d[1];
  const std::optional<std::size_t> item_size = core::parse_whole<std::size_t>(std::string_view(d).substr(2));
  if (!item_size) throw IoError(member.where() + ": .npy dtype '" + d + "' has no item size, expected e.g. '<f4'");
  header.item_size = *item_size;
  if (header.fortran_order) throw IoError(member.where() + ": .npy array in Fortran order, expected C order");
  return header;
}

}  // namespace mpicnn::data::npz
