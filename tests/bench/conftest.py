import sys
from pathlib import Path

# bench_techniques is referenced by recipes as a class_path, so it must be importable by name.
sys.path.insert(0, str(Path(__file__).parent))
