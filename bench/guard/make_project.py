"""Write the guard benchmark's workload project into a directory: a small C program of 40
translation units with a Makefile, and a Python test suite of 400 tests that compute and write
small files. Deterministic, so every run of every mode builds and tests the same thing."""
import os
import sys

root = sys.argv[1]
os.makedirs(os.path.join(root, "src"), exist_ok=True)
os.makedirs(os.path.join(root, "tests"), exist_ok=True)
units = 40
for i in range(units):
    with open(os.path.join(root, "src", f"unit{i}.c"), "w") as f:
        f.write(f"#include <stdint.h>\n#include <string.h>\n")
        for j in range(12):
            f.write(
                f"uint64_t unit{i}_f{j}(uint64_t x) {{\n"
                f"    uint64_t acc = x ^ {i * 131 + j};\n"
                f"    for (int k = 0; k < 64; k++) {{ acc = acc * 6364136223846793005ULL + {j + 1}; acc ^= acc >> 17; }}\n"
                f"    char buf[64]; memset(buf, (int)(acc & 0xff), sizeof buf);\n"
                f"    return acc + (uint64_t)buf[{j % 64}];\n}}\n"
            )
with open(os.path.join(root, "src", "main.c"), "w") as f:
    f.write("#include <stdio.h>\n#include <stdint.h>\n")
    for i in range(units):
        f.write(f"uint64_t unit{i}_f0(uint64_t);\n")
    f.write("int main(void) {\n    uint64_t s = 0;\n")
    for i in range(units):
        f.write(f"    s += unit{i}_f0(s);\n")
    f.write('    printf("%llu\\n", (unsigned long long)s);\n    return 0;\n}\n')
objects = " ".join(f"src/unit{i}.o" for i in range(units)) + " src/main.o"
with open(os.path.join(root, "Makefile"), "w") as f:
    f.write(f"app: {objects}\n\tcc -o app {objects}\n\nsrc/%.o: src/%.c\n\tcc -O1 -c $< -o $@\n")
for t in range(20):
    with open(os.path.join(root, "tests", f"test_{t}.py"), "w") as f:
        f.write("import hashlib, os, tempfile, unittest\n\nclass T(unittest.TestCase):\n")
        for k in range(20):
            f.write(
                f"    def test_{k}(self):\n"
                f"        h = hashlib.sha256(b'{t}-{k}' * 2000).hexdigest()\n"
                f"        with tempfile.NamedTemporaryFile('w', dir='.', delete=True) as out:\n"
                f"            out.write(h * 50)\n"
                f"        self.assertEqual(len(h), 64)\n"
            )
with open(os.path.join(root, "workload.sh"), "w") as f:
    f.write("set -e\ncd \"$(dirname \"$0\")\"\nmake -s -j2 app >/dev/null\n./app >/dev/null\n"
            "python3 -m unittest discover -q -s tests 2>/dev/null\n")
