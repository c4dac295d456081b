from hllama.cli import entry

entry()
