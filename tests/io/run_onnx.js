// Runs an ONNX model with onnxruntime-node on float32 inputs from a raw file, in batches of a given
// size, and writes every output as raw float32 (concatenated over batches).
// usage: node run_onnx.js MODEL INPUT.f32 N,C,H,W|N,C,D,H,W BATCH OUT_PREFIX
// Writes OUT_PREFIX<output name>.f32 and prints one JSON line: output names, dims, the model's
// input name and the batch dimension it declares.
'use strict';
const fs = require('fs');
const ort = require('onnxruntime-node');

async function main() {
  const [model, inputPath, shapeText, batchText, prefix] = process.argv.slice(2);
  const [n, ...sampleDims] = shapeText.split(',').map(Number);
  const batch = Number(batchText);
  const bytes = fs.readFileSync(inputPath);
  const all = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  const sample = sampleDims.reduce((a, b) => a * b, 1);
  if (all.length !== n * sample) throw new Error(`${inputPath}: ${all.length} floats, expected ${n * sample}`);
  const session = await ort.InferenceSession.create(model, { executionProviders: ['cpu'] });
  const outputs = {};
  const dims = {};
  for (let start = 0; start < n; start += batch) {
    const count = Math.min(batch, n - start);
    const x = new ort.Tensor('float32', all.subarray(start * sample, (start + count) * sample), [count, ...sampleDims]);
    const result = await session.run({ [session.inputNames[0]]: x });
    for (const name of session.outputNames) {
      const t = result[name];
      if (t.dims[0] !== count) throw new Error(`output ${name}: batch dimension ${t.dims[0]}, expected ${count}`);
      (outputs[name] = outputs[name] || []).push(Float32Array.from(t.data));
      dims[name] = [n, ...t.dims.slice(1)];
    }
  }
  for (const name of session.outputNames) {
    const parts = outputs[name];
    const total = new Float32Array(parts.reduce((s, p) => s + p.length, 0));
    let at = 0;
    for (const p of parts) total.set(p, at), (at += p.length);
    fs.writeFileSync(prefix + name + '.f32', Buffer.from(total.buffer));
  }
  console.log(JSON.stringify({ inputs: session.inputNames, outputs: session.outputNames, dims }));
}

main().catch((e) => {
  console.error('error: ' + (e && e.message ? e.message : e));
  process.exit(1);
});
