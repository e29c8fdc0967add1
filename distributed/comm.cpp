#include "comm.hpp"

#include <chrono>
#include <cstdio>
#include <thread>

#include "core/errors.hpp"

namespace mpicnn::dist {

void check(int status, const char* call) {
  if (status == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(status, text, &length);
  throw Error(std::string(call) + " failed: " + std::string(text, length));
}

namespace {

constexpr int kRing = 1;  // coll_libnbc_iallreduce_algorithm's value for the ring

// Open MPI's libnbc ring gave wrong in-place sums before 4.0.7 and 4.1.2 (open-mpi/ompi#9385), and
// the algorithm chosen applies to every non-blocking allreduce of the process, in place or not.
bool ring_allreduce_is_safe() {
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0, major = 0, minor = 0, release = 0;
  if (MPI_Get_library_version(version, &length) != MPI_SUCCESS ||
      std::sscanf(version, "Open MPI v%d.%d.%d", &major, &minor, &release) != 3)
    return false;
  const int number = (major * 100 + minor) * 100 + release;
  return number >= 40102 || (number >= 40007 && number < 40100);
}

// Below 4 ranks Open MPI's non-blocking allreduce (coll/libnbc) sums along a binomial tree: rank 0
// receives, adds and sends back every bucket while the others wait for it. A ring gives every rank
// an equal share of the additions and copies, in as few rounds at 2 and 3 ranks (from 4 ranks on,
// libnbc's own choice for large sums not in place, Rabenseifner's, is already even). Set through
// the MPI tool interface, where the variable exists and holds its default: other MPI libraries,
// and a user's OMPI_MCA_coll_libnbc_iallreduce_algorithm other than 0, are left alone. True when
// the ring is in use.
bool prefer_ring_allreduce() {
  int provided = 0, count = 0, algorithm = 0;
  if (!ring_allreduce_is_safe() || MPI_T_init_thread(MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) return false;
  MPI_T_cvar_get_num(&count);
  for (int i = 0; i < count; ++i) {
    char name[128], description[8];
    int name_length = sizeof name, description_length = sizeof description, verbosity = 0, binding = 0, scope = 0;
    MPI_Datatype type;
    MPI_T_enum values;
    if (MPI_T_cvar_get_info(i, name, &name_length, &verbosity, &type, &values, description, &description_length,
                            &binding, &scope) != MPI_SUCCESS ||
        std::string(name) != "coll_libnbc_iallreduce_algorithm" || type != MPI_INT)
      continue;
    MPI_T_cvar_handle handle;
    int elements = 0;
    if (MPI_T_cvar_handle_alloc(i, nullptr, &handle, &elements) != MPI_SUCCESS) break;
    if (MPI_T_cvar_read(handle, &algorithm) == MPI_SUCCESS && algorithm == 0 &&
        MPI_T_cvar_write(handle, &kRing) == MPI_SUCCESS)
      algorithm = kRing;
    MPI_T_cvar_handle_free(&handle);
    break;
  }
  MPI_T_finalize();
  return algorithm == kRing;
}

}  // namespace

Environment::Environment(int* argc, char*** argv) {
  int provided = 0;
  check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  if (provided < MPI_THREAD_FUNNELED) throw Error("MPI does not provide MPI_THREAD_FUNNELED");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

Environment::~Environment() { MPI_Finalize(); }

Communicator::Communicator() {
  check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
  check(MPI_Comm_dup(MPI_COMM_WORLD, &errors_), "MPI_Comm_dup");
  check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node_), "MPI_Comm_split_type");
  check(MPI_Comm_size(node_, &ranks_on_node_), "MPI_Comm_size");
  check(MPI_Comm_rank(node_, &node_rank_), "MPI_Comm_rank");
  const bool leader = node_rank_ == 0;
  check(MPI_Comm_split(MPI_COMM_WORLD, leader ? 0 : MPI_UNDEFINED, rank_, &leaders_), "MPI_Comm_split");
  int counts[2] = {leader ? 1 : 0, ranks_on_node_};
  check(MPI_Allreduce(MPI_IN_PLACE, &counts[0], 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
  check(MPI_Allreduce(MPI_IN_PLACE, &counts[1], 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
  nodes_ = counts[0], most_ranks_on_a_node_ = counts[1];
  // The gradient sums cross the nodes' first ranks where nodes hold several ranks, else all ranks.
  const int summing = nodes_ > 1 && most_ranks_on_a_node_ > 1 ? nodes_ : size_;
  if (summing == 2 || summing == 3) ring_allreduce_ = prefer_ring_allreduce();
}

// (Were the constructor to throw, its communicators would be left to MPI_Abort, which main calls.)
Communicator::~Communicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (leaders_ != MPI_COMM_NULL) MPI_Comm_free(&leaders_);
  if (node_ != MPI_COMM_NULL) MPI_Comm_free(&node_);
  if (errors_ != MPI_COMM_NULL) MPI_Comm_free(&errors_);
}

void Communicator::allreduce_sum(std::span<float> values) const {
  check(MPI_Allreduce(MPI_IN_PLACE, values.data(), int(values.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
}
void Communicator::allreduce_sum(std::span<double> values) const {
  check(MPI_Allreduce(MPI_IN_PLACE, values.data(), int(values.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
}
void Communicator::allreduce_sum(std::span<std::int64_t> values) const {
  check(MPI_Allreduce(MPI_IN_PLACE, values.data(), int(values.size()), MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
}
double Communicator::allreduce_max(double value) const {
  check(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
  return value;
}
bool Communicator::same_on_all_ranks(std::uint64_t value) const {
  std::uint64_t low = value, high = value;
  check(MPI_Allreduce(MPI_IN_PLACE, &low, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce");
  check(MPI_Allreduce(MPI_IN_PLACE, &high, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
  return low == high;
}
void Communicator::broadcast(std::span<float> values, int root) const {
  check(MPI_Bcast(values.data(), int(values.size()), MPI_FLOAT, root, MPI_COMM_WORLD), "MPI_Bcast");
}
void Communicator::broadcast(std::string& text, int root) const {
  std::uint64_t length = text.size();
  check(MPI_Bcast(&length, 1, MPI_UINT64_T, root, MPI_COMM_WORLD), "MPI_Bcast");
  text.resize(length);
  check(MPI_Bcast(text.data(), int(length), MPI_CHAR, root, MPI_COMM_WORLD), "MPI_Bcast");
}
namespace {

template <class T>
std::vector<T> gather(std::span<const T> values, MPI_Datatype type, int rank, int size) {
  int mine = int(values.size());
  std::vector<int> counts(size), offsets(size);
  check(MPI_Gather(&mine, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Gather");
  std::vector<T> all;
  if (rank == 0) {
    for (int r = 1; r < size; ++r) offsets[r] = offsets[r - 1] + counts[r - 1];
    all.resize(std::size_t(offsets[size - 1]) + counts[size - 1]);
  }
  check(MPI_Gatherv(values.data(), mine, type, all.data(), counts.data(), offsets.data(), type, 0, MPI_COMM_WORLD),
        "MPI_Gatherv");
  return all;
}

template <class T>
std::vector<T> gather_everywhere(std::span<const T> values, MPI_Datatype type, int size) {
  return allgather_concatenated(values, type, MPI_COMM_WORLD, size, [](MPI_Request& request, const char*) {
    check(MPI_Wait(&request, MPI_STATUS_IGNORE), "MPI_Wait");
  });
}

}  // namespace

std::vector<float> Communicator::allgather(std::span<const float> values) const {
  return gather_everywhere(values, MPI_FLOAT, size_);
}
std::vector<std::int32_t> Communicator::allgather(std::span<const std::int32_t> values) const {
  return gather_everywhere(values, MPI_INT32_T, size_);
}
std::vector<double> Communicator::allgather(std::span<const double> values) const {
  return gather_everywhere(values, MPI_DOUBLE, size_);
}

std::vector<float> Communicator::gather_to_root(std::span<const float> values) const {
  return gather(values, MPI_FLOAT, rank_, size_);
}
std::vector<std::int32_t> Communicator::gather_to_root(std::span<const std::int32_t> values) const {
  return gather(values, MPI_INT32_T, rank_, size_);
}

std::vector<std::uint64_t> Communicator::errors_on_every_rank(std::uint64_t error_id, double seconds) const {
  if (size_ == 1) return {error_id};
  error_id_ = error_id;
  error_ids_.assign(size_, 0);
  MPI_Request request = MPI_REQUEST_NULL;
  // No check(): this runs while an error is being reported; a failing call means no agreement.
  if (MPI_Iallgather(&error_id_, 1, MPI_UINT64_T, error_ids_.data(), 1, MPI_UINT64_T, errors_, &request) != MPI_SUCCESS)
    return {};
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    int done = 0;
    if (MPI_Test(&request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return {};
    if (done) return error_ids_;
    // The request stays active: the caller ends the job with MPI_Abort.
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > seconds) return {};
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void Communicator::barrier() const { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }

std::uint64_t fingerprint(const void* data, std::size_t bytes) {
  std::uint64_t hash = 1469598103934665603ULL;
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) hash = (hash ^ p[i]) * 1099511628211ULL;
  return hash;
}

}  // namespace mpicnn::dist
