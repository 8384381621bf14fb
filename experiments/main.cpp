#include <cstdio>
#include <cstring>
int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--version") == 0) { std::printf("normlab %s\n", NORMLAB_VERSION); return 0; }
  std::printf("usage: normlab [--help | --version]\n");
  return 0;
}
