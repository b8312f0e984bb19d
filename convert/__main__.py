import argparse
import sys

from clip_jax.cli.main import add_convert_args, run

p = argparse.ArgumentParser(prog="python -m convert", description="Convert a PyTorch CLIP checkpoint to clip_jax.")
add_convert_args(p)
sys.exit(run(p))
