"""Print pip's configured package sources (find-links, index URLs) as uv flags.

`make venv` installs with uv, which reads no pip configuration: this hands it the same sources
pip would use (pip.conf files and PIP_* variables, as `pip config list` shows them), so that a
machine with a local wheelhouse or mirror installs from there with either tool.
"""
import subprocess
import sys

FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
         "find-links": "--find-links"}


def main() -> None:
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                            capture_output=True, text=True).stdout
    flags: list[str] = []
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        flag = FLAGS.get(key.rsplit(".", 1)[-1])
        for source in value.strip("'\"").split() if flag else ():
            pair = f"{flag} {source}"
            if pair not in flags:
                flags.append(pair)
    print(" ".join(flags))


if __name__ == "__main__":
    main()
