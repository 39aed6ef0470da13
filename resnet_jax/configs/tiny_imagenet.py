import ml_collections

from resnet_jax.configs import imagenet

EPOCHS = 40


def get_config(model: str = "resnet18") -> ml_collections.ConfigDict:
    c = imagenet.get_config(model)  # the recipe of Sec. 3.4; what changes with the image size follows
    c.dataset = "folder:tiny-imagenet-200"
    c.train_split = "train"
    c.eval_split = "val"
    c.image_size = 64
    c.num_train_steps = EPOCHS * 40_000 // c.batch_size
    c.lr_boundaries_epochs = (20, 30)
    # Sec. 4.2's warm-up: 0.01 for the first epoch, then 0.1. At a constant 0.1 from step 0 every 34- and
    # 50-layer net of this family collapses to a uniform guess on these 64-px images (in PyTorch too).
    c.warmup_steps, c.warmup_epochs, c.warmup_lr = 0, 1.0, 0.01
    c.log_every_steps = 50
    c.eval_every_steps = 625
    c.checkpoint_every_steps = 625
    c.eval_batch_size = 500
    return c
