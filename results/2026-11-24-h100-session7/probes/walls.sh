# Wall times of the bench's compiled passes, CUDA graphs on and off, plus the fixed cost of a custom-kernel call.
for graphs in 1 0; do
  for impl in null nullmlx; do MLX_USE_CUDA_GRAPHS=$graphs python3 .device/exp/gaps.py $impl tiny fwd 2>&1 | grep WALL | sed "s/^/graphs=$graphs /"; done
  for layout in tiny qwen; do for impl in poc demo; do for mode in fwd fwdbwd; do
    MLX_USE_CUDA_GRAPHS=$graphs python3 .device/exp/gaps.py $impl $layout $mode 2>&1 | grep WALL | sed "s/^/graphs=$graphs /"
  done; done; done
done
