"""What the study measures about a trained LeNet-5: corruptions, adversarial attacks, sharpness,
statistics. Imports ``lenet_utils``; ``lenet_utils`` never imports this package."""
