from resnet_jax import host_memory

host_memory.keep_freed_memory()  # before anything starts threads

from resnet_jax.reproduce import main  # noqa: E402

main()
