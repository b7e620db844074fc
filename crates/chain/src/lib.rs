pub mod yuma;
