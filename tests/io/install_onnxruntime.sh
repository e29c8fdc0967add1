#!/usr/bin/env bash
# Installs onnxruntime-node (the version tests/io/package.json pins) into FOLDER/node_modules for the
# ONNX export tests; does nothing when that version is already there. ONNXRUNTIME_NODE_INSTALL=skip:
# the package's own install step would download extra binaries, which this network does not allow;
# the CPU runtime it ships inside the npm package is all the tests use.
# usage: install_onnxruntime.sh FOLDER
set -euo pipefail
folder=$1
here=$(cd "$(dirname "$0")" && pwd)
wanted=$(node -p "require('$here/package.json').dependencies['onnxruntime-node']")
installed=$(node -p "try { require('$folder/node_modules/onnxruntime-node/package.json').version } catch (e) { '' }")
if [[ "$installed" != "$wanted" ]]; then
  mkdir -p "$folder"
  cp "$here/package.json" "$folder/package.json"
  (cd "$folder" && ONNXRUNTIME_NODE_INSTALL=skip npm install --no-audit --no-fund --loglevel=error)
fi
NODE_PATH="$folder/node_modules" node -e "const ort = require('onnxruntime-node'); console.log('onnxruntime-node ' + require('onnxruntime-node/package.json').version + ' ready')"
