mod health;
mod proxy;
