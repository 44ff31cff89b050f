fn main() {
    println!("handwritten: skeleton");
}
