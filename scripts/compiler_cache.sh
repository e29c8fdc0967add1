# Sourced by setup.sh, sanitize.sh and fuzz.sh: compile through ccache when it is installed
# (setup.sh installs it). CI builds a fresh clone every time, so without a cache each of its three
# builds (Release, sanitizer, fuzz) compiles everything again. CCACHE_BASEDIR makes the cache key
# use paths relative to the clone, and CCACHE_NOHASHDIR leaves the working folder out of the key
# of -g builds, so an unchanged source hits the cache from any clone's path.
compiler_cache_args=()
if command -v ccache > /dev/null; then
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=true
  compiler_cache_args=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
