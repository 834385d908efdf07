// deltatron command-line entry point (placeholder until the score command lands).
#include <cstdio>
int main() { std::puts("deltatron"); return 0; }
