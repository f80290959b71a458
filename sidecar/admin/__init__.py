"""The admin listener: minting and management APIs for the company's backend."""
