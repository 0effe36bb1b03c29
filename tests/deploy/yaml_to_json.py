"""Prints the YAML documents of each file given as one JSON object
{"<file>": [doc, ...]}: the deploy test reads the manifests through the same
YAML loader (PyYAML, safe) that kubernetes-validate uses."""
import json
import sys

import yaml


def main() -> int:
    out = {}
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            out[path] = [d for d in yaml.safe_load_all(f) if d is not None]
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
