from resnet_jax.reproduce import main

main()
