"""Business documents and the knowledge base built from them."""
