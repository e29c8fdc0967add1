#!/usr/bin/env bash
# Installs every Debian package mpicnn needs (build, tests, benchmarks), then configures and builds
# into build/. Idempotent: safe to run again; re-running only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake pkg-config ccache            # ccache: CI rebuilds fresh clones
  libopenmpi-dev openmpi-bin                       # MPI
  libtbb-dev                                       # oneTBB
  libhdf5-dev hdf5-tools                           # datasets and checkpoints
  libboost-program-options-dev                     # command line and INI configs
  libgtest-dev libbenchmark-dev                    # tests and micro-benchmarks
  libopenblas-dev libopenblas0-pthread             # sgemm (one BLAS thread per call)
  zlib1g-dev libstb-dev                            # image-folder converter
  libnifti2-dev libgdcm-dev                        # NIfTI (niftilib) and DICOM (GDCM) converters
  python3-nibabel python3-pydicom                  # their references, with real NIfTI/DICOM test files
  nlohmann-json3-dev                               # COCO annotations (convert --format coco)
  libonnx-dev libprotobuf-dev protobuf-compiler python3-onnx   # ONNX export and its checker
  python3-torch python3-torchvision python3-h5py python3-numpy   # PyTorch references (torchvision: ResNet-18)
  python3-sklearn                                  # metric references (AUC, accuracy) in tests
  python3-skimage                                  # lfw_subset: the real face crops of configs/faces_lfw_subset.ini
  python3-matplotlib                               # scripts/plot.py: pictures of run folders
  dataset-fashion-mnist                            # the real dataset of the quick start
  slurm-wlm munge                                  # the local SLURM cluster of the SLURM tests
  clang-14 libclang-rt-14-dev                      # libFuzzer targets
)

missing=()
for p in "${packages[@]}"; do
  [[ "$p" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# onnxruntime-node runs exported models in the tests; node may already come from elsewhere.
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

build_dir=${BUILD_DIR:-build}
source scripts/compiler_cache.sh
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "${compiler_cache_args[@]}" ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
echo "setup: built $build_dir/"
