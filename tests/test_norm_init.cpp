// Init utilities: DeepNorm constants against hand-computed numbers, the statistics of the
// initialisers on large tensors (within sampling error), the truncated normal's bounds and
// moments, determinism, deepnorm_init's choice of matrices, and bad input.
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "framework/parallel.h"
#include "framework/tensor_ops.h"
#include "norm/init.h"
#include "norm/layer_norm/layer_norm.h"
#include "tests/test_util.h"

using namespace normlab;
using namespace normlab::testing;

namespace {

struct Moments {
  double mean, std, min, max;
};

Moments moments(const Tensor& t) {
  BOOST_CHECK_MESSAGE(all_finite(t), "non-finite values");
  const std::vector<double> v = t.to(DType::f64).contiguous().to_vector<double>();
  double s = 0, ss = 0, lo = INFINITY, hi = -INFINITY;
  for (double x : v) s += x, lo = std::min(lo, x), hi = std::max(hi, x);
  const double m = s / double(v.size());
  for (double x : v) ss += (x - m) * (x - m);
  return {m, std::sqrt(ss / double(v.size())), lo, hi};
}

bool same_values(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.to(DType::f64).to_vector<double>() == b.to(DType::f64).to_vector<double>();
}

// One transformer block's worth of matrices under the naming convention of deepnorm_role.
std::shared_ptr<ModuleDict> toy_model(Generator& gen, int64_t d, int64_t ff) {
  auto model = std::make_shared<ModuleDict>();
  model->add("embed", std::make_shared<Embedding>(16, d, gen));
  auto block = model->add("blocks", std::make_shared<ModuleDict>())->add("0", std::make_shared<ModuleDict>());
  auto attn = block->add("attn", std::make_shared<ModuleDict>());
  for (const char* n : {"q", "k", "v", "out"}) attn->add(n, std::make_shared<Linear>(d, d, true, gen));
  block->add("ln", std::make_shared<LayerNorm>(d));
  auto ffn = block->add("ffn", std::make_shared<ModuleDict>());
  ffn->add("up", std::make_shared<Linear>(d, ff, true, gen));
  ffn->add("gate", std::make_shared<Linear>(d, ff, true, gen));
  ffn->add("down", std::make_shared<Linear>(ff, d, true, gen));
  return model;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(init_suite)

BOOST_AUTO_TEST_CASE(deepnorm_constants_match_the_paper) {
  // Hand-computed: (12)^(1/4), 48^(-1/4); 200^(1/4), 800^(-1/4); 2000^(1/4), 8000^(-1/4).
  const DeepNormConstants e6 = deepnorm_encoder_only(6);
  BOOST_CHECK_CLOSE(e6.alpha, 1.8612097182041991, 1e-12);
  BOOST_CHECK_CLOSE(e6.beta, 0.37991784282579627, 1e-12);
  const DeepNormConstants e100 = deepnorm_encoder_only(100);
  BOOST_CHECK_CLOSE(e100.alpha, 3.7606030930863934, 1e-12);
  BOOST_CHECK_CLOSE(e100.beta, 0.1880301546543197, 1e-12);
  const DeepNormConstants d1000 = deepnorm_decoder_only(1000);
  BOOST_CHECK_CLOSE(d1000.alpha, 6.68740304976422, 1e-12);
  BOOST_CHECK_CLOSE(d1000.beta, 0.10573712634405641, 1e-12);
  BOOST_CHECK_CLOSE(deepnorm_decoder_only(6).alpha, e6.alpha, 1e-12);  // same formula in M
  BOOST_CHECK_CLOSE(deepnorm_encoder_only(1).alpha, std::pow(2.0, 0.25), 1e-12);

  // Encoder-decoder: N^4 M = 6^5 = 7776 and 18^5 = 1889568.
  const DeepNormEncoderDecoder ed6 = deepnorm_encoder_decoder(6, 6);
  BOOST_CHECK_CLOSE(ed6.encoder.alpha, 1.417938140685523, 1e-12);
  BOOST_CHECK_CLOSE(ed6.encoder.beta, 0.49698924077132345, 1e-12);
  BOOST_CHECK_CLOSE(ed6.decoder.alpha, 2.0597671439071177, 1e-12);
  BOOST_CHECK_CLOSE(ed6.decoder.beta, 0.34329452398451965, 1e-12);
  const DeepNormEncoderDecoder ed18 = deepnorm_encoder_decoder(18, 18);
  BOOST_CHECK_CLOSE(ed18.encoder.alpha, 1.998746318027809, 1e-12);
  BOOST_CHECK_CLOSE(ed18.encoder.beta, 0.35257100595704277, 1e-12);
  BOOST_CHECK_CLOSE(ed18.decoder.alpha, 2.7108060108295344, 1e-12);
  BOOST_CHECK_CLOSE(ed18.decoder.beta, 0.26084743001221455, 1e-12);
  // N and M enter the encoder's constants differently (N^4 M).
  BOOST_CHECK_GT(deepnorm_encoder_decoder(12, 6).encoder.alpha, deepnorm_encoder_decoder(6, 12).encoder.alpha);
}

BOOST_AUTO_TEST_CASE(xavier_statistics) {
  Generator gen(21);
  // [out, in] = [512, 256]: std = gain sqrt(2 / 768); 131072 samples, sampling error ~0.2%.
  Tensor w = empty({512, 256}, DType::f64);
  xavier_normal_(w, 0.5, gen);
  const double std_expected = 0.5 * std::sqrt(2.0 / 768.0);
  BOOST_CHECK_CLOSE(xavier_normal_std(w.shape(), 0.5), std_expected, 1e-12);
  Moments m = moments(w);
  BOOST_CHECK_SMALL(m.mean, 0.02 * std_expected);
  BOOST_CHECK_CLOSE(m.std, std_expected, 1.5);

  // uniform(-b, b), b = gain sqrt(6 / 768): std b / sqrt(3), extremes near +-b.
  Tensor u = empty({512, 256}, DType::f32);
  xavier_uniform_(u, 2.0, gen);
  const double bound = 2.0 * std::sqrt(6.0 / 768.0);
  BOOST_CHECK_CLOSE(xavier_uniform_bound(u.shape(), 2.0), bound, 1e-12);
  m = moments(u);
  BOOST_CHECK_LE(m.max, bound);
  BOOST_CHECK_GE(m.min, -bound);
  BOOST_CHECK_GT(m.max, 0.999 * bound);
  BOOST_CHECK_LT(m.min, -0.999 * bound);
  BOOST_CHECK_CLOSE(m.std, bound / std::sqrt(3.0), 1.5);

  // Fans of a conv-like [out, in, k] weight include the receptive field.
  const Fans f = fans_of({8, 4, 3});
  BOOST_CHECK_EQUAL(f.in, 12);
  BOOST_CHECK_EQUAL(f.out, 24);

  // normal_ with a mean.
  Tensor n = empty({300, 300}, DType::f64);
  normal_(n, 0.3, gen, -1.5);
  m = moments(n);
  BOOST_CHECK_CLOSE(m.mean, -1.5, 0.5);
  BOOST_CHECK_CLOSE(m.std, 0.3, 1.5);
}

BOOST_AUTO_TEST_CASE(trunc_normal_bounds_and_moments) {
  Generator gen(22);
  Tensor t = empty({512, 512}, DType::f64);
  // Default [-2 std, 2 std]: std = 0.8796256610342398 std (the truncated normal's formula
  // sqrt(1 + (a phi(a) - b phi(b)) / Z - ((phi(a) - phi(b)) / Z)^2), a = -2, b = 2).
  trunc_normal_(t, 0.02, gen);
  Moments m = moments(t);
  BOOST_CHECK_GE(m.min, -0.04);
  BOOST_CHECK_LE(m.max, 0.04);
  BOOST_CHECK_GT(m.max, 0.0399);
  BOOST_CHECK_SMALL(m.mean, 0.01 * 0.02);
  BOOST_CHECK_CLOSE(m.std, 0.8796256610342398 * 0.02, 1.0);

  // Asymmetric [-1, 3] (std 1): mean 0.28278611072715404, std 0.7849469634044259.
  trunc_normal_(t, 1.0, gen, -1.0, 3.0);
  m = moments(t);
  BOOST_CHECK_GE(m.min, -1.0);
  BOOST_CHECK_LE(m.max, 3.0);
  BOOST_CHECK_CLOSE(m.mean, 0.28278611072715404, 3.0);
  BOOST_CHECK_CLOSE(m.std, 0.7849469634044259, 1.0);

  // Far in the upper tail, [8.5, 9] (std 1, mass 9.4e-18): mean 8.608643996852145, std
  // 0.09923873804221112. An inverse CDF of p = Phi(a) + u Z would see p == 1 in double.
  trunc_normal_(t, 1.0, gen, 8.5, 9.0);
  m = moments(t);
  BOOST_CHECK_GE(m.min, 8.5);
  BOOST_CHECK_LE(m.max, 9.0);
  BOOST_CHECK_CLOSE(m.mean, 8.608643996852145, 0.05);
  BOOST_CHECK_CLOSE(m.std, 0.09923873804221112, 1.0);
  trunc_normal_(t, 2.0, gen, -18.0, -17.0);  // the same interval mirrored, at std 2
  m = moments(t);
  BOOST_CHECK_CLOSE(m.mean, -2 * 8.608643996852145, 0.05);
  BOOST_CHECK_CLOSE(m.std, 2 * 0.09923873804221112, 1.0);

  // An f32 tensor: values within bounds after rounding.
  Tensor f = empty({1000}, DType::f32);
  trunc_normal_(f, 1.0, gen);
  m = moments(f);
  BOOST_CHECK_GE(m.min, -2.0);
  BOOST_CHECK_LE(m.max, 2.0);
}

BOOST_AUTO_TEST_CASE(same_seed_same_tensor) {
  auto draw = [](uint64_t seed) {
    Generator gen(seed);
    Tensor a = empty({64, 48}, DType::f32), b = empty({64, 48}, DType::f64), c = empty({64, 48}, DType::f64);
    xavier_normal_(a, 1.0, gen);
    xavier_uniform_(b, 1.0, gen);
    trunc_normal_(c, 0.02, gen);
    return std::vector<Tensor>{a, b, c};
  };
  const auto x = draw(5), y = draw(5), z = draw(6);
  for (size_t i = 0; i < x.size(); ++i) {
    BOOST_CHECK(same_values(x[i], y[i]));
    BOOST_CHECK(!same_values(x[i], z[i]));
  }
  // The thread count does not change a draw.
  const int threads = num_threads();
  set_num_threads(1);
  const auto w = draw(5);
  set_num_threads(threads);
  for (size_t i = 0; i < x.size(); ++i) BOOST_CHECK(same_values(x[i], w[i]));
  // deepnorm_init is deterministic too.
  Generator g1(7), g2(7), g3(7), g4(7);
  auto m1 = toy_model(g1, 8, 16), m2 = toy_model(g2, 8, 16);
  deepnorm_init(*m1, 0.3, g3);
  deepnorm_init(*m2, 0.3, g4);
  const auto p1 = m1->named_parameters(), p2 = m2->named_parameters();
  for (size_t i = 0; i < p1.size(); ++i)
    BOOST_CHECK_MESSAGE(same_values(p1[i].second.data(), p2[i].second.data()), p1[i].first);
}

BOOST_AUTO_TEST_CASE(deepnorm_init_scales_v_out_ffn_but_not_q_k) {
  Generator gen(23);
  const int64_t d = 128, ff = 512;
  auto model = toy_model(gen, d, ff);
  std::vector<std::pair<std::string, Tensor>> before;
  for (auto& [n, p] : model->named_parameters()) before.emplace_back(n, p.data().clone());

  const double beta = deepnorm_decoder_only(1000).beta;
  const DeepNormInitResult r = deepnorm_init(*model, beta, gen);
  using V = std::vector<std::string>;
  BOOST_CHECK(r.qk == (V{"blocks.0.attn.q.weight", "blocks.0.attn.k.weight"}));
  BOOST_CHECK(r.scaled == (V{"blocks.0.attn.v.weight", "blocks.0.attn.out.weight", "blocks.0.ffn.up.weight",
                             "blocks.0.ffn.gate.weight", "blocks.0.ffn.down.weight"}));

  const auto params = model->named_parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& [name, p] = params[i];
    const DeepNormRole role = deepnorm_role(name);
    if (role == DeepNormRole::other) {
      BOOST_CHECK_MESSAGE(same_values(p.data(), before[i].second), name << " changed");
      continue;
    }
    // 16K to 64K samples: sampling error of the std under 0.6%.
    const double want = (role == DeepNormRole::scaled ? beta : 1.0) * std::sqrt(2.0 / double(p.size(0) + p.size(1)));
    const double got = moments(p.data()).std;
    BOOST_CHECK_MESSAGE(std::abs(got / want - 1) < 0.03, name << ": std " << got << ", expected " << want);
  }
  // q/k were re-initialised (Linear's uniform(+-1/sqrt(d)) has std 1/sqrt(3d) = 0.051, xavier 0.088).
  BOOST_REQUIRE_EQUAL(params[1].first, "blocks.0.attn.q.weight");
  BOOST_CHECK_GT(moments(params[1].second.data()).std, 0.08);
}

BOOST_AUTO_TEST_CASE(deepnorm_role_matches_whole_name_segments) {
  BOOST_CHECK(deepnorm_role("blocks.3.attn.q.weight") == DeepNormRole::qk);
  BOOST_CHECK(deepnorm_role("attn.k.weight") == DeepNormRole::qk);
  BOOST_CHECK(deepnorm_role("blocks.3.attn.out.weight") == DeepNormRole::scaled);
  BOOST_CHECK(deepnorm_role("blocks.3.ffn.gate.weight") == DeepNormRole::scaled);
  BOOST_CHECK(deepnorm_role("blocks.3.attn.v.bias") == DeepNormRole::other);
  BOOST_CHECK(deepnorm_role("blocks.3.self_attn.q.weight") == DeepNormRole::other);
  BOOST_CHECK(deepnorm_role("blocks.3.myffn.up.weight") == DeepNormRole::other);
  BOOST_CHECK(deepnorm_role("blocks.3.attn.qkv.weight") == DeepNormRole::other);
}

BOOST_AUTO_TEST_CASE(deepnorm_init_with_a_custom_role_function) {
  Generator gen(24);
  ModuleDict m;
  m.add("fc1", std::make_shared<Linear>(64, 256, false, gen));
  m.add("fc2", std::make_shared<Linear>(256, 64, false, gen));
  const DeepNormInitResult r = deepnorm_init(m, 0.25, gen, [](const std::string& n) {
    return n == "fc1.weight" ? DeepNormRole::scaled : DeepNormRole::other;
  });
  BOOST_CHECK(r.scaled == std::vector<std::string>{"fc1.weight"});
  BOOST_CHECK(r.qk.empty());
  BOOST_CHECK_CLOSE(moments(m.named_parameters()[0].second.data()).std, 0.25 * std::sqrt(2.0 / 320.0), 3.0);
}

BOOST_AUTO_TEST_CASE(bad_input_is_named) {
  Generator gen(25);
  BOOST_CHECK(contains(error_of([] { deepnorm_encoder_only(0); }),
                       "deepnorm_encoder_only: the number of encoder layers must be >= 1, got 0"));
  BOOST_CHECK(contains(error_of([] { deepnorm_decoder_only(-3); }), "decoder layers must be >= 1, got -3"));
  BOOST_CHECK(contains(error_of([] { deepnorm_encoder_decoder(6, 0); }), "decoder layers must be >= 1, got 0"));
  BOOST_CHECK(contains(error_of([] { deepnorm_encoder_decoder(0, 6); }), "encoder layers must be >= 1, got 0"));

  Tensor w = empty({4, 3}, DType::f32), v = empty({5}, DType::f32);
  BOOST_CHECK(contains(error_of([&] { xavier_normal_(v, 1.0, gen); }),
                       "xavier_normal_: needs a tensor of at least 2 dims ([out, in, ...]), got shape [5]"));
  BOOST_CHECK(contains(error_of([&] { xavier_uniform_(v, 1.0, gen); }), "got shape [5]"));
  BOOST_CHECK(contains(error_of([&] { xavier_normal_(w, 0.0, gen); }), "gain must be a finite number > 0, got 0"));
  BOOST_CHECK(contains(error_of([&] { xavier_uniform_(w, -1.0, gen); }), "gain must be a finite number > 0, got -1"));
  BOOST_CHECK(contains(error_of([&] { normal_(w, 0.0, gen); }), "normal_: std must be a finite number > 0, got 0"));
  BOOST_CHECK(contains(error_of([&] { trunc_normal_(w, -0.5, gen); }), "std must be a finite number > 0, got -0.5"));
  BOOST_CHECK(contains(error_of([&] { trunc_normal_(w, 1.0, gen, 1.0, 1.0); }), "lo < hi, got lo=1 hi=1"));
  BOOST_CHECK(contains(error_of([&] { trunc_normal_(w, 1.0, gen, 50.0, 60.0); }), "holds no probability mass"));
  Tensor i = empty({4, 3}, DType::i64);
  BOOST_CHECK(contains(error_of([&] { normal_(i, 1.0, gen); }), "floating dtype, got i64"));

  ModuleDict m;
  m.add("embed", std::make_shared<Embedding>(4, 8, gen));
  m.add("ln", std::make_shared<LayerNorm>(8));
  BOOST_CHECK(contains(error_of([&] { deepnorm_init(m, 0.3, gen); }), "no parameter has the scaled role"));
  BOOST_CHECK(contains(error_of([&] { deepnorm_init(m, 0.3, gen); }), "embed.weight, ln.weight, ln.bias"));
  BOOST_CHECK(contains(error_of([&] { deepnorm_init(m, 0.0, gen); }), "beta must be a finite number > 0, got 0"));
  BOOST_CHECK(contains(error_of([&] {
                         deepnorm_init(m, 0.3, gen, [](const std::string&) { return DeepNormRole::scaled; });
                       }),
                       "parameter 'ln.weight' has shape [8]; xavier init needs a matrix"));
}

BOOST_AUTO_TEST_SUITE_END()
