// The 3D layers: conv3d, maxpool3d, avgpool3d, over volumes (C,D,H,W) as PyTorch's Conv3d,
// MaxPool3d and AvgPool3d (floor mode, count_include_pad=True). Kernel, window, stride and pad are
// one size for all three axes ("3") or one per axis, depth x height x width ("1x3x3"), as PyTorch's
// tuples. Registered in layers.cpp.
#include "arg_reader.hpp"
#include "errors.hpp"
#include "pool_layer.hpp"
#include "volume_kernels.hpp"

namespace mpicnn::core {
namespace {

Extent3 extent_arg(const ArgReader& a, const std::string& name, int min_value) {
  const std::array<int, 3> e = a.extent(name, min_value);
  return {e[0], e[1], e[2]};
}
// As the spec reads it back: "3" when every axis agrees, else "1x3x3".
std::string extent_text(const Extent3& e) {
  if (e.d == e.h && e.h == e.w) return std::to_string(e.d);
  return std::to_string(e.d) + "x" + std::to_string(e.h) + "x" + std::to_string(e.w);
}
Extent3 extent_of(const Shape& s) { return {s.d, s.h, s.w}; }
Shape volume_shape(int channels, const Extent3& e) { return {channels, e.h, e.w, e.d}; }

// A volume whose depth is 1 reads as an image (Shape cannot tell them apart): the 3D layers refuse it,
// as the 2D layers refuse volumes, so that a spec written for the other kind fails where it goes wrong.
void require_volume(const ArgReader& a, const Shape& in, const std::string& instead) {
  if (!in.is_volume())
    a.fail("needs a volume input (C,D,H,W) with depth > 1, got image " + in.str() + " (for images use " + instead + ")");
}

void require_window_fits(const ArgReader& a, const Shape& in, const char* what, const Extent3& size, const Extent3& pad) {
  if (in.d + 2 * pad.d < size.d || in.h + 2 * pad.h < size.h || in.w + 2 * pad.w < size.w)
    a.fail(std::string(what) + " " + extent_text(size) + " with pad " + extent_text(pad) + " does not fit input " + in.str());
}

class Conv3D final : public Layer {
 public:
  Conv3D(const ArgReader& a, const Shape& in) {
    require_volume(a, in, "conv");
    const int filters = a.integer("filters", 1);
    const Extent3 kernel = extent_arg(a, "kernel", 1), stride = extent_arg(a, "stride", 1), pad = extent_arg(a, "pad", 0);
    bias_ = a.boolean("bias");
    require_window_fits(a, in, "kernel", kernel, pad);
    const Extent3 e = extent_of(in);
    g_ = {in.c, e, filters, kernel, stride, pad, sliding_extent(e, kernel, stride, pad)};
    input_ = in;
    output_ = volume_shape(filters, g_.out);
  }
  std::string spec() const override {
    return "conv3d(" + std::to_string(g_.filters) + "," + extent_text(g_.kernel) + ",stride=" + extent_text(g_.stride) +
           ",pad=" + extent_text(g_.pad) + (bias_ ? "" : ",bias=false") + ")";
  }
  void declare(ParamStore& store, StateStore&, const Scope& scope) override {
    const int fan_in = int(g_.col_rows()), fan_out = g_.filters * int(g_.kernel.volume());
    const Extent3& k = g_.kernel;
    weight_ = store.declare({scope.prefix + "weight", {g_.filters, g_.in_channels, k.d, k.h, k.w}, 0, 0, scope.unit,
                             fan_in, fan_out, ParamRole::weight});
    if (bias_)
      bias_index_ = store.declare({scope.prefix + "bias", {g_.filters}, 0, 0, scope.unit, fan_in, fan_out, ParamRole::bias});
  }
  void bind(const BindContext& context) override { store_ = &context.params; }
  void forward(float* out, const float* in, int batch) override {
    conv3d_forward(out, in, store_->value(weight_), bias_ ? store_->value(bias_index_) : nullptr, g_,
                   batch);
  }
  void backward(float* in_grad, const float* out_grad, const float* in, const float*, int batch) override {
    conv3d_backward(in_grad, store_->grad(weight_), bias_ ? store_->grad(bias_index_) : nullptr, out_grad, in, store_->value(weight_), g_, batch);
  }
  double forward_flops() const override { return 2.0 * double(g_.out_size()) * double(g_.col_rows()); }

 private:
  Conv3dGeometry g_;
  bool bias_ = true;
  int weight_ = -1, bias_index_ = -1;
  ParamStore* store_ = nullptr;
};

class Pool3D final : public PoolLayer<Pool3dGeometry> {
 public:
  Pool3D(const ArgReader& a, const Shape& in, bool is_max)
      : PoolLayer(is_max, {maxpool3d_forward<float>, maxpool3d_backward<float>, avgpool3d_forward<float>,
                           avgpool3d_backward<float>}) {
    require_volume(a, in, is_max ? "maxpool" : "avgpool");
    const Extent3 window = extent_arg(a, "window", 1);
    const Extent3 stride = a.given("stride") ? extent_arg(a, "stride", 1) : window;
    const Extent3 pad = extent_arg(a, "pad", 0);
    if (2 * pad.d > window.d || 2 * pad.h > window.h || 2 * pad.w > window.w)
      a.fail("pad " + extent_text(pad) + " must be at most half the window " + extent_text(window));
    require_window_fits(a, in, "window", window, pad);
    const Extent3 e = extent_of(in);
    g_ = {in.c, e, window, stride, pad, sliding_extent(e, window, stride, pad)};
    input_ = in;
    output_ = volume_shape(in.c, g_.out);
  }
  std::string spec() const override {
    return std::string(max_ ? "maxpool3d(" : "avgpool3d(") + extent_text(g_.window) + ",stride=" +
           extent_text(g_.stride) + ",pad=" + extent_text(g_.pad) + ")";
  }
};

}  // namespace

std::unique_ptr<Layer> make_conv3d(const LayerArgs& args, const Shape& in, const std::string& path) {
  return std::make_unique<Conv3D>(ArgReader(args, {"filters", "kernel", "stride=1", "pad=0", "bias=true"}, path), in);
}

std::unique_ptr<Layer> make_maxpool3d(const LayerArgs& args, const Shape& in, const std::string& path) {
  return std::make_unique<Pool3D>(ArgReader(args, {"window", "stride=window", "pad=0"}, path), in, true);
}

std::unique_ptr<Layer> make_avgpool3d(const LayerArgs& args, const Shape& in, const std::string& path) {
  return std::make_unique<Pool3D>(ArgReader(args, {"window", "stride=window", "pad=0"}, path), in, false);
}

}  // namespace mpicnn::core
