"""DeepGuard: pipeline stages that detect AI-generated images, and the code they share."""
