"""Data: raw layouts → records → cached uint8 arrays → sampled, augmented batches."""
