// Module: dotted parameter names, buffers, train/eval, Linear and Embedding.
#include <boost/test/unit_test.hpp>

#include "autograd/module.h"
#include "autograd/ops.h"
#include "framework/cuda.h"
#include "test_util.h"

using namespace normlab;
using normlab::testing::contains;
using normlab::testing::error_of;

namespace {

class Block : public Module {
 public:
  explicit Block(Generator& gen) {
    fc = register_module("fc", std::make_shared<Linear>(3, 4, true, gen, DType::f64));
    register_buffer("count", zeros({1}, DType::f64));
  }
  std::shared_ptr<Linear> fc;
};

class Net : public Module {
 public:
  explicit Net(Generator& gen) {
    for (int i = 0; i < 2; ++i) blocks.push_back(register_module(std::to_string(i), std::make_shared<Block>(gen)));
    scale = register_parameter("scale", ones({1}, DType::f64));
  }
  void add_twice() { register_parameter("scale", ones({1})); }
  std::vector<std::shared_ptr<Block>> blocks;
  Variable scale;
};

}  // namespace

BOOST_AUTO_TEST_CASE(dotted_names_buffers_and_modes) {
  Generator gen(1);
  Net net(gen);
  std::vector<std::string> names;
  for (const auto& [name, p] : net.named_parameters()) names.push_back(name);
  const std::vector<std::string> expect = {"scale", "0.fc.weight", "0.fc.bias", "1.fc.weight", "1.fc.bias"};
  BOOST_TEST(names == expect, boost::test_tools::per_element());
  BOOST_TEST(net.named_buffers().size() == 2u);
  BOOST_TEST(net.named_buffers()[1].first == "1.count");
  BOOST_TEST(net.training());
  net.eval();
  BOOST_TEST(!net.blocks[1]->fc->training());
  BOOST_TEST(contains(error_of([&] { net.add_twice(); }), "'scale' is already registered"));
}

BOOST_AUTO_TEST_CASE(linear_and_embedding) {
  Generator gen(2);
  Linear fc(3, 2, true, gen, DType::f64);
  Variable x(from_vector<double>({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {2, 2, 3}));
  Variable y = fc.forward(x);
  BOOST_TEST(y.shape() == Shape({2, 2, 2}));
  const Tensor& w = fc.weight.data();
  const double expect = 4 * w.at({1, 0}) + 5 * w.at({1, 1}) + 6 * w.at({1, 2}) + fc.bias.data().at({1});
  BOOST_TEST(std::abs(y.data().at({0, 1, 1}) - expect) < 1e-12);
  sum(y).backward();
  BOOST_TEST(fc.bias.grad().at({0}) == 4.0);  // one per row of x
  BOOST_TEST(fc.weight.grad().at({0, 2}) == 3 + 6 + 9 + 12.0);
  fc.zero_grad();
  BOOST_TEST(!fc.weight.grad().defined());
  BOOST_TEST(contains(error_of([&] { fc.forward(Variable(zeros({2, 4}, DType::f64))); }), "[2, 4]"));
  Embedding emb(5, 3, gen, DType::f64);
  Variable e = emb.forward(from_vector<int64_t>({4, 0, 4}, {3}));
  BOOST_TEST(e.data().at({0, 2}) == emb.weight.data().at({4, 2}));
  sum(e).backward();
  BOOST_TEST(emb.weight.grad().at({4, 1}) == 2.0);
  BOOST_TEST(emb.weight.grad().at({2, 1}) == 0.0);
}

// Module::to moves parameters and buffers (and drops gradients); the member Variables follow,
// since they share the parameters. On a GPU-less machine the CUDA half checks the error.
BOOST_AUTO_TEST_CASE(to_moves_parameters_and_buffers) {
  Generator gen(3);
  Net net(gen);
  sum(net.blocks[0]->fc->forward(Variable(ones({2, 3}, DType::f64)))).backward();
  BOOST_TEST(net.blocks[0]->fc->weight.grad().defined());
  const Tensor before = net.blocks[0]->fc->weight.data().clone();
  net.to(Device::cpu());
  BOOST_TEST(!net.blocks[0]->fc->weight.grad().defined());
  BOOST_TEST(net.blocks[0]->fc->weight.data().at({1, 2}) == before.at({1, 2}));
  if (!cuda_available()) {
    BOOST_TEST(contains(error_of([&] { net.to(Device::cuda()); }), "cuda:0 is not available"));
    return;
  }
  net.to(Device::cuda());
  for (const auto& [name, p] : net.named_parameters()) BOOST_TEST(p.data().device() == Device::cuda(), name);
  for (const auto& [name, b] : net.named_buffers()) BOOST_TEST(b.device() == Device::cuda(), name);
  BOOST_TEST(net.blocks[0]->fc->weight.data().device() == Device::cuda());
  net.to(Device::cpu());
  BOOST_TEST(net.blocks[0]->fc->weight.data().at({1, 2}) == before.at({1, 2}));
}
