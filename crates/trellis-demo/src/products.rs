//! The shop's data and its two gRPC services.

use crate::grpc::{self, ProductRequest, RatingReply, StockReply};
use tonic::{Request, Response, Status};

/// (id, name, price in cents)
pub const PRODUCTS: [(u32, &str, u32); 4] =
    [(1, "trellis kit", 4900), (2, "climbing rose", 1250), (3, "garden twine", 399), (4, "copper labels", 899)];

pub fn product(id: u32) -> Option<(u32, &'static str, u32)> {
    PRODUCTS.iter().copied().find(|(p, _, _)| *p == id)
}

pub struct InventoryService;

#[tonic::async_trait]
impl grpc::inventory_server::Inventory for InventoryService {
    async fn stock(&self, request: Request<ProductRequest>) -> Result<Response<StockReply>, Status> {
        let id = request.into_inner().product_id;
        product(id).ok_or_else(|| Status::not_found(format!("no product {id}")))?;
        Ok(Response::new(StockReply { product_id: id, in_stock: 10 + id * 7 % 13 }))
    }
}

pub struct RatingsService;

#[tonic::async_trait]
impl grpc::ratings_server::Ratings for RatingsService {
    async fn rating(&self, request: Request<ProductRequest>) -> Result<Response<RatingReply>, Status> {
        let id = request.into_inner().product_id;
        product(id).ok_or_else(|| Status::not_found(format!("no product {id}")))?;
        Ok(Response::new(RatingReply { product_id: id, stars: 3 + id % 3, votes: 40 + id * 11 }))
    }
}
