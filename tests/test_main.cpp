#define BOOST_TEST_MODULE normlab
#include <boost/test/unit_test.hpp>
