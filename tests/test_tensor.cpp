#include <boost/test/unit_test.hpp>
#include "framework/tensor.h"
using namespace normlab;
BOOST_AUTO_TEST_CASE(placeholder_shape) { BOOST_TEST(zeros({2, 3}).numel() == 6); }
