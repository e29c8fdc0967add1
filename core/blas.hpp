#pragma once
// Row-major GEMM in float (training) and double (gradient checks in the tests) over OpenBLAS
// (core-internal).
#include <cblas.h>

namespace mpicnn::core::blas {

// Each GEMM runs in the TBB task that calls it; a BLAS thread pool on top would oversubscribe, and
// its splits would follow the thread count. Set once, by whichever kernel file is linked.
inline const bool single_threaded = [] {
  openblas_set_num_threads(1);
  return true;
}();

inline void gemm(CBLAS_TRANSPOSE a_trans, CBLAS_TRANSPOSE b_trans, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, a_trans, b_trans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void gemm(CBLAS_TRANSPOSE a_trans, CBLAS_TRANSPOSE b_trans, int m, int n, int k, double alpha, const double* a,
                 int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, a_trans, b_trans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace mpicnn::core::blas
