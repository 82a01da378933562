"""`python -m bench [SECTION ...]`: run the benchmark sections (all by default) and print ratios."""

import argparse
import importlib
import sys

SECTIONS = [
    "writer_bench",
    "loader_bench",
    "mix_bench",
    "coco_bench",
    "photo_bench",
    "mask_folder_bench",
    "python_build_bench",
    "publish_bench",
    "dedup_bench",
    "partition_bench",
    "audit_bench",
    "near_dup_bench",
    "gpu_feed",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", add_help=False)
    parser.add_argument("sections", nargs="*", default=SECTIONS, help=f"any of {SECTIONS}")
    parser.add_argument("-h", "--help", action="store_true", help="this help; after a section, its options")
    args, rest = parser.parse_known_args(argv)
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:  # a misspelt section would otherwise be skipped and the run still succeed
        parser.error(f"no section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    if args.help:
        if args.sections is SECTIONS:  # no section named: the sections themselves
            parser.print_help()
            return 0
        rest.append("--help")  # the named section's own options (its parser prints them and exits)
    for name in args.sections:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            print(f"[bench] {name}: not present, skipped")
            continue
        if not args.help:  # a section's help is its usage alone
            print(f"\n===== {name} =====", flush=True)
        module.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
