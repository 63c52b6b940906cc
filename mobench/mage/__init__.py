"""MAGE (Merge And GuidE): Bone-Soup base, merged value-model guidance, top-k guided decoding."""
