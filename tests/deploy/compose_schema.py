"""Validates a compose file against the Compose Specification's JSON schema.

    python compose_schema.py SCHEMA.json compose.yaml

Prints every violation as `path: message` and exits 1 when there is one;
exits 0 and prints `valid` otherwise."""
import json
import sys

import jsonschema
import yaml


def main() -> int:
    schema_path, compose_path = sys.argv[1], sys.argv[2]
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    with open(compose_path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    # The schema says draft 2019-09 with a URL jsonschema does not know
    # (a trailing '#'), so name the draft instead of guessing it.
    validator = jsonschema.Draft201909Validator(
        schema, format_checker=jsonschema.Draft201909Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    for e in errors:
        path = "/".join(str(p) for p in e.absolute_path) or "(top)"
        print(f"{compose_path}: {path}: {e.message}")
    if errors:
        return 1
    print("valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
